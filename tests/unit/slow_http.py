"""A raw HTTP/1.1 server on loopback that answers slowly or hugely, for the limits' tests.

Written on sockets rather than Werkzeug so that the test decides every byte: a header
line or a body byte every `interval` seconds, with or without Content-Length.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class SlowServer:
    """`mode`: "trickle_body", "trickle_headers" or "flood"; `body` is what it sends."""

    mode: str
    body: bytes
    interval: float = 0.1
    #: "flood": send `body` this many times, without Content-Length (close-delimited).
    repeat: int = 1
    content_type: str = "application/fhir+json"
    requests: int = 0
    #: Set when the client went away before the whole answer was sent.
    cut_off: threading.Event = field(default_factory=threading.Event)
    #: Set when a whole answer was sent.
    finished: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)

    def serve(self, listener: socket.socket) -> None:
        listener.settimeout(0.05)  # so that the loop sees the stop
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return
            rest += chunk

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                self._read_request(conn)
                self.requests += 1
                if self.mode == "trickle_headers":
                    head = (
                        f"HTTP/1.1 200 OK\r\nContent-Type: {self.content_type}\r\n"
                        f"Content-Length: {len(self.body)}\r\n\r\n"
                    ).encode()
                    self._drip(conn, head)
                    conn.sendall(self.body)
                elif self.mode == "trickle_body":
                    conn.sendall(
                        f"HTTP/1.1 200 OK\r\nContent-Type: {self.content_type}\r\n"
                        f"Content-Length: {len(self.body)}\r\n\r\n".encode()
                    )
                    self._drip(conn, self.body)
                else:  # flood: no length, the body ends when the connection closes
                    conn.sendall(
                        f"HTTP/1.1 200 OK\r\nContent-Type: {self.content_type}\r\n"
                        "Connection: close\r\n\r\n".encode()
                    )
                    for _ in range(self.repeat):
                        conn.sendall(self.body)
                self.finished.set()
            except OSError:
                self.cut_off.set()

    def _drip(self, conn: socket.socket, data: bytes) -> None:
        for i in range(len(data)):
            if self._stop.wait(self.interval):
                raise OSError("server stopped")
            conn.sendall(data[i : i + 1])


@contextmanager
def slow_server(server: SlowServer) -> Iterator[str]:
    """Run `server` on 127.0.0.1; yields its base URL (`http://127.0.0.1:PORT`)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    thread = threading.Thread(target=server.serve, args=(listener,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server._stop.set()
        listener.close()
        thread.join(5)
