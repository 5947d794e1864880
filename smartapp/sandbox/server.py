"""A waitress server on a background thread, bound at construction so its URL is known early.

The sandbox EHR and the app each need the other's URL before either WSGI app is built:
bind both servers first (port 0 allowed), read their URLs, build the apps, `set_app`,
`start`. https://docs.pylonsproject.org/projects/waitress/
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from waitress import wasyncore

from smartapp.serving import create_server

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class BackgroundServer:
    """`BackgroundServer(host, port)` binds now; `.set_app(app)`, `.start()`, `.stop()`.

    `public_host` names the server in `url` when it differs from the bind address, e.g.
    bind 127.0.0.1 but publish `http://localhost:PORT` so the EHR and the app are
    different sites. Threads default to 16: latency simulation sleeps inside requests.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        app: WSGIApp | None = None,
        threads: int = 16,
        public_host: str | None = None,
        ident: str = "smartapp-sandbox",
        connection_limit: int = 100,
    ) -> None:
        self._app = app
        # The health routes get threads of their own, as in `smartapp serve`.
        self._server: Any = create_server(
            self._dispatch,
            host=host,
            port=port,
            threads=threads,
            ident=ident,
            # Long-polling is not a thing here; close idle keep-alive sockets reasonably soon.
            channel_timeout=60,
            # waitress's own default; past it the server stops accepting (it does not queue).
            connection_limit=connection_limit,
        )
        self.host = host
        self.port: int = int(self._server.effective_port)
        self.public_host = public_host or host
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        host = f"[{self.public_host}]" if ":" in self.public_host else self.public_host
        return f"http://{host}:{self.port}"

    def set_app(self, app: WSGIApp) -> None:
        self._app = app

    def _dispatch(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        app = self._app
        if app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"starting up\n"]
        return app(environ, start_response)

    def start(self) -> BackgroundServer:
        if self._app is None:
            raise RuntimeError("set_app() before start()")
        if self._stopped:
            raise RuntimeError("a stopped BackgroundServer cannot be restarted")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.run, name=f"waitress:{self.port}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        server = self._server
        socket_map = server._map

        def close_all() -> None:
            wasyncore.close_all(socket_map)

        if self._thread is not None and self._thread.is_alive():
            # Close the sockets on the loop's own thread: the loop then finds its map empty
            # and returns, with no cross-thread mutation of the map while it polls.
            try:
                server.trigger.pull_trigger(close_all)
            except OSError as exc:
                # The loop's wake-up pipe is already closed (seen once in CI, EBADF, as the
                # loop was ending on its own): close the sockets here rather than fail the stop.
                log.warning("waitress loop on port %s: wake-up failed (%s)", self.port, exc)
                close_all()
            self._thread.join(timeout)
            if self._thread.is_alive():  # pragma: no cover - only if the loop is wedged
                log.warning("waitress loop on port %s did not stop in %.1fs", self.port, timeout)
        else:
            close_all()
        server.task_dispatcher.shutdown(timeout=timeout)

    def __enter__(self) -> BackgroundServer:
        if self._app is not None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
