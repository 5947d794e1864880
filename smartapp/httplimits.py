"""Hard limits on one HTTP exchange with an upstream (the EHR, the LLM): a deadline and a size cap.

`requests`' timeouts bound each wait on the socket, not the exchange: a server that sends
a byte every few seconds keeps a request alive for ever, and a server that sends 400 MB
fills the process's memory. Here a watchdog shuts the connection's socket down when the
deadline passes, wherever the exchange is (sending, waiting for the headers, reading the
body), and the body is read in chunks and counted after decoding, so an answer is
refused at the cap instead of being held.

    DeadlineExceeded   the whole exchange took longer than its deadline
    ResponseTooLarge   the body (decoded) is larger than the cap; `.limit` holds the cap

Both are raised by `send()`; callers turn them into their own errors. The watchdog finds
the sockets through `LimitedAdapter`'s connection pools (`limited_session()` mounts it);
with another adapter (a test's `responses`) the deadline is checked between chunks only.
https://requests.readthedocs.io/en/latest/user/advanced/#timeouts
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

CHUNK_BYTES = 64 * 1024
#: Once the deadline has passed, how often the watchdog looks again for a socket that was
#: still connecting when it first looked.
_RECHECK_SECONDS = 0.05


class DeadlineExceeded(Exception):
    """The exchange (connect, send, headers, body) did not finish before its deadline."""


class ResponseTooLarge(Exception):
    """The answer's body is larger than the cap."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than {limit} bytes")
        self.limit = limit


class _Watchdog:
    """Shuts down the sockets of one exchange when its deadline passes."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def attach(self, connection: Any) -> None:
        with self._lock:
            self._connections.append(connection)
        if self.fired:
            self._shut_down()

    def stop(self) -> None:
        self._done.set()
        self._timer.cancel()

    def _fire(self) -> None:
        self.fired = True
        # A connection may still be connecting (its socket not yet there): look again
        # until the exchange gives up.
        while not self._done.is_set():
            self._shut_down()
            self._done.wait(_RECHECK_SECONDS)

    def _shut_down(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            sock = getattr(connection, "sock", None)
            if sock is None:
                continue
            try:
                # shutdown, not close: it wakes a recv blocked in another thread.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed


_current = threading.local()


def _watch(connection: Any) -> None:
    watchdog: _Watchdog | None = getattr(_current, "watchdog", None)
    if watchdog is not None:
        watchdog.attach(connection)


class _WatchedPool(HTTPConnectionPool):
    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)
        _watch(connection)
        return connection


class _WatchedTLSPool(HTTPSConnectionPool):
    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)
        _watch(connection)
        return connection


class LimitedAdapter(HTTPAdapter):
    """An adapter whose connections the watchdog of `send()` can cut at the deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedPool, "https": _WatchedTLSPool}


def limited_session() -> requests.Session:
    """A `requests.Session` on `LimitedAdapter`: what the FHIR client and the LLM engine use."""
    session = requests.Session()
    session.mount("http://", LimitedAdapter())
    session.mount("https://", LimitedAdapter())
    return session


def send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    deadline: float,
    max_bytes: int,
    connect_timeout: float,
    read_timeout: float,
    **kwargs: Any,
) -> requests.Response:
    """One request whose answer is read whole before `deadline` (a `time.monotonic()` value).

    The response comes back with its body read (`response.content`) and its connection
    released. Raises DeadlineExceeded, ResponseTooLarge, or what `requests` raises.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded()
    watchdog = _Watchdog(remaining)
    outer = getattr(_current, "watchdog", None)
    _current.watchdog = watchdog
    try:
        try:
            response = session.request(
                method,
                url,
                stream=True,
                timeout=(min(connect_timeout, remaining), min(read_timeout, remaining)),
                **kwargs,
            )
        finally:
            _current.watchdog = outer
        with response:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise ResponseTooLarge(max_bytes)
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_content(CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise ResponseTooLarge(max_bytes)
                if watchdog.fired:
                    raise DeadlineExceeded()
                chunks.append(chunk)
            if watchdog.fired:
                # A body without a length ends where the watchdog cut it: not an answer.
                raise DeadlineExceeded()
            response._content = b"".join(chunks)
        return response
    except requests.RequestException:
        if watchdog.fired:
            raise DeadlineExceeded() from None
        raise
    finally:
        watchdog.stop()
