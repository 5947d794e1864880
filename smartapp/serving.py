"""Serving the app with waitress: the health routes answered by threads of their own.

waitress hands every request to one pool of threads; when all of them wait on a slow EHR,
a load balancer's `/healthz` waits behind them and the process looks dead. Here the pool
is waitress's own (`ThreadedTaskDispatcher`), and a request for `GET /healthz` or
`GET /readyz` goes to a second, small pool instead, so that both answer whatever the
app's threads are doing. https://docs.pylonsproject.org/projects/waitress/en/stable/design.html

A process told to stop (SIGTERM from the orchestrator or `serve --processes`' parent, or
Ctrl-C) stops taking connections and lets the requests it has begun finish, for up to
`SHUTDOWN_GRACE_SECONDS`, before its store is closed: a note being saved is saved.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from waitress.task import ThreadedTaskDispatcher

logger = logging.getLogger(__name__)

#: The routes a load balancer or an orchestrator probes: never queued behind clinicians.
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
#: Threads for them: one probe at a time is the norm, two leave room for a slow /readyz.
HEALTH_THREADS = 2
#: How long a stopping process waits for the requests it has begun (waitress's own is 5 s,
#: shorter than a note's write-back to a slow EHR); under Kubernetes' default 30 s grace.
SHUTDOWN_GRACE_SECONDS = 25.0


#: The cyclic collector's thresholds while serving (CPython's are 700, 10, 10): a chart
#: load allocates some 30,000 containers (the EHR's JSON) that all live on as the
#: snapshot, and at 700 the collector scanned them again and again while they arrived.
GC_THRESHOLDS = (10_000, 10, 10)


def tune_collector() -> None:
    """Set up the garbage collector for serving, once the app is built: what start-up made
    (modules, the FHIR models, the validation tables) is frozen out of the collector's
    scans, which then run a fourteenth as often. Reference counting still frees what is
    not in a cycle at once. make bench's chart: ~15% less CPU per chart load (A/B in one
    process; bench/README.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class HealthFirstDispatcher(ThreadedTaskDispatcher):  # type: ignore[misc]
    """waitress's dispatcher for the app's requests, and another for the health routes."""

    def __init__(self, threads: int, *, health_threads: int = HEALTH_THREADS) -> None:
        super().__init__()
        self.set_thread_count(threads)
        self.health = ThreadedTaskDispatcher()
        self.health.set_thread_count(health_threads)

    def add_task(self, task: Any) -> None:
        # `task` is the connection (waitress's HTTPChannel) with its parsed requests; the
        # first is the one about to be served.
        requests = getattr(task, "requests", None) or ()
        first = requests[0] if requests else None
        if (
            first is not None
            and getattr(first, "command", None) in ("GET", "HEAD")
            and getattr(first, "path", None) in HEALTH_PATHS
        ):
            self.health.add_task(task)
            return
        super().add_task(task)

    def shutdown(
        self, cancel_pending: bool = True, timeout: float = SHUTDOWN_GRACE_SECONDS
    ) -> bool:
        # waitress calls this with its defaults when its loop ends: the grace is ours.
        done = bool(super().shutdown(cancel_pending, timeout))
        return bool(self.health.shutdown(cancel_pending, timeout)) and done


def create_server(app: Any, *, threads: int, **adjustments: Any) -> Any:
    """A waitress server for `app` whose health routes never wait for its threads."""
    from waitress.server import create_server as waitress_server

    return waitress_server(
        app, threads=threads, _dispatcher=HealthFirstDispatcher(threads), **adjustments
    )


def run_until_stopped(
    server: Any,
    *,
    on_stopped: Callable[[], None],
    grace: float = SHUTDOWN_GRACE_SECONDS,
    stopping: threading.Event | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT; then take no connection, finish what has begun, stop.

    `stopping`, when given, is the signal instead (a server run off the main thread).

    waitress's own `run()` ends on SystemExit by abandoning responses not yet written (its
    loop, which writes them, has ended); here the loop goes on, without accepting, until
    every begun request is answered and its bytes sent, or `grace` has passed.
    """
    from waitress import wasyncore
    from waitress.channel import HTTPChannel
    from waitress.server import BaseWSGIServer

    if stopping is None:
        stopping = threading.Event()

        def stop(_signum: int, _frame: FrameType | None) -> None:
            stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    # One listening socket: a TcpWSGIServer (its map `_map`); several: a MultiSocketServer.
    sockets: dict[int, Any] = getattr(server, "map", None) or server._map
    adj = server.adj

    def poll(timeout: float) -> None:
        wasyncore.loop(timeout=timeout, use_poll=adj.asyncore_use_poll, map=sockets, count=1)

    def busy() -> bool:
        tasks = server.task_dispatcher
        if tasks.active_count > 0 or tasks.queue:
            return True
        return any(
            isinstance(channel, HTTPChannel) and (channel.requests or channel.total_outbufs_len)
            for channel in list(sockets.values())
        )

    try:
        while not stopping.is_set():
            poll(adj.asyncore_loop_timeout)
        for listener in [d for d in sockets.values() if isinstance(d, BaseWSGIServer)]:
            listener.accepting = False  # a sibling process sharing the socket still accepts
            listener.del_channel()
            listener.socket.close()
        logger.info(
            "stopping: no new connections; finishing the requests begun (up to %g s)", grace
        )
        deadline = time.monotonic() + grace
        while busy() and time.monotonic() < deadline:
            poll(0.05)
        server.task_dispatcher.shutdown(
            cancel_pending=True, timeout=max(0.0, deadline - time.monotonic())
        )
        wasyncore.close_all(sockets)
    finally:
        on_stopped()
