"""Hard limits on one HTTP exchange with an upstream (the EHR, the LLM): a deadline and a size cap.

`requests`' timeouts bound each wait on the socket, not the exchange: a server that sends
a byte every few seconds keeps a request alive for ever, and a server that sends 400 MB
fills the process's memory. Here a watchdog shuts the connection's socket down when the
deadline passes, wherever the exchange is (sending, waiting for the headers, reading the
body), and the body is read in chunks and counted after decoding, so an answer is
refused at the cap instead of being held.

    DeadlineExceeded   the whole exchange took longer than its deadline
    ResponseTooLarge   the body (decoded) is larger than the cap; `.limit` holds the cap

Both are raised by `send()`, and by a `LimitedAdapter` given limits of its own; they are
`requests` exceptions (a Timeout, a RequestException), so code written for `requests`
handles them. The watchdog finds the sockets through `LimitedAdapter`'s connection pools
(`limited_session()` mounts it); with another adapter (a test's `responses`) the
deadline is checked between chunks only.
https://requests.readthedocs.io/en/latest/user/advanced/#timeouts
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

CHUNK_BYTES = 64 * 1024
#: The cap of an adapter given a deadline but no size.
DEFAULT_MAX_BYTES = 1024 * 1024
#: Once the deadline has passed, how often the watchdog looks again for a socket that was
#: still connecting when it first looked.
_RECHECK_SECONDS = 0.05


class DeadlineExceeded(requests.Timeout):
    """The exchange (connect, send, headers, body) did not finish before its deadline.

    A `requests.Timeout`, so that code written for `requests` treats it as one.
    """


class ResponseTooLarge(requests.RequestException):
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
    """An adapter whose connections the watchdog can cut at the deadline.

    With `deadline` and `max_bytes` it enforces them on every request sent through it
    (`session.get(...)` included: what discovery, the token endpoint and JWKS use);
    without, only `send()` does, with the deadline it is given.
    """

    def __init__(self, *, deadline: float | None = None, max_bytes: int | None = None) -> None:
        super().__init__()
        self.deadline = deadline
        self.max_bytes = max_bytes

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedPool, "https": _WatchedTLSPool}

    def send(
        self,
        request: Any,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        options = {"verify": verify, "cert": cert, "proxies": proxies}
        if self.deadline is None or getattr(_current, "watchdog", None) is not None:
            # Inside `send()` below, or no limits of its own: a plain send.
            plain: requests.Response = super().send(
                request, stream=stream, timeout=timeout, **options
            )
            return plain

        def start(remaining: float) -> requests.Response:
            response: requests.Response = super(LimitedAdapter, self).send(
                request, stream=True, timeout=_clamp(timeout, remaining), **options
            )
            return response

        return _exchange(
            start,
            deadline=time.monotonic() + self.deadline,
            max_bytes=self.max_bytes or DEFAULT_MAX_BYTES,
        )


def limited_session(
    *, deadline: float | None = None, max_bytes: int | None = None
) -> requests.Session:
    """A `requests.Session` on `LimitedAdapter`.

    Without arguments (the FHIR client, the LLM engine) the limits come with each `send()`;
    with them, every request through the session has them.
    """
    session = requests.Session()
    session.mount("http://", LimitedAdapter(deadline=deadline, max_bytes=max_bytes))
    session.mount("https://", LimitedAdapter(deadline=deadline, max_bytes=max_bytes))
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

    def start(remaining: float) -> requests.Response:
        return session.request(
            method,
            url,
            stream=True,
            timeout=(min(connect_timeout, remaining), min(read_timeout, remaining)),
            **kwargs,
        )

    return _exchange(start, deadline=deadline, max_bytes=max_bytes)


def _clamp(timeout: Any, remaining: float) -> Any:
    if isinstance(timeout, tuple):
        return tuple(remaining if t is None else min(t, remaining) for t in timeout)
    if isinstance(timeout, int | float):
        return min(float(timeout), remaining)
    return remaining


def _exchange(
    start: Callable[[float], requests.Response], *, deadline: float, max_bytes: int
) -> requests.Response:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded()
    watchdog = _Watchdog(remaining)
    outer = getattr(_current, "watchdog", None)
    _current.watchdog = watchdog
    try:
        try:
            response = start(remaining)
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
    except (DeadlineExceeded, ResponseTooLarge):
        raise
    except requests.RequestException:
        if watchdog.fired:
            raise DeadlineExceeded() from None
        raise
    finally:
        watchdog.stop()
