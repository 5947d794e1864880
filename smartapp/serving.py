"""Serving the app with waitress: the health routes answered by threads of their own.

waitress hands every request to one pool of threads; when all of them wait on a slow EHR,
a load balancer's `/healthz` waits behind them and the process looks dead. Here the pool
is waitress's own (`ThreadedTaskDispatcher`), and a request for `GET /healthz` or
`GET /readyz` goes to a second, small pool instead, so that both answer whatever the
app's threads are doing. https://docs.pylonsproject.org/projects/waitress/en/stable/design.html
"""

from __future__ import annotations

import gc
from typing import Any

from waitress.task import ThreadedTaskDispatcher

#: The routes a load balancer or an orchestrator probes: never queued behind clinicians.
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
#: Threads for them: one probe at a time is the norm, two leave room for a slow /readyz.
HEALTH_THREADS = 2
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

    def shutdown(self, cancel_pending: bool = True, timeout: float = 5) -> bool:
        health_done = self.health.shutdown(cancel_pending, timeout)
        return bool(super().shutdown(cancel_pending, timeout)) and bool(health_done)


def create_server(app: Any, *, threads: int, **adjustments: Any) -> Any:
    """A waitress server for `app` whose health routes never wait for its threads."""
    from waitress.server import create_server as waitress_server

    return waitress_server(
        app, threads=threads, _dispatcher=HealthFirstDispatcher(threads), **adjustments
    )
