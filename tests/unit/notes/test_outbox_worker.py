"""Unit: the background worker runs the outbox and housekeeping, and survives failures."""

from __future__ import annotations

import threading

from smartapp.notes.outbox import OutboxWorker


class CountingOutbox:
    def __init__(self) -> None:
        self.runs = 0
        self.enough = threading.Event()

    def run_once(self) -> None:
        self.runs += 1
        if self.runs >= 3:
            self.enough.set()


def test_worker_keeps_running_when_a_task_fails():
    outbox = CountingOutbox()
    purged: list[int] = []

    def purge() -> int:
        purged.append(1)
        if len(purged) == 1:
            raise RuntimeError("the store was busy")
        return 0

    worker = OutboxWorker(outbox, interval=0.01, housekeeping=[purge])  # type: ignore[arg-type]
    worker.start()
    try:
        assert outbox.enough.wait(5)
    finally:
        worker.stop()
    assert len(purged) >= 2  # the failed first run did not stop the second


class RecoveringOutbox(CountingOutbox):
    def __init__(self) -> None:
        super().__init__()
        self.recovered = 0
        self.first = threading.Event()

    def recover(self) -> int:
        self.recovered += 1
        return 0

    def run_once(self) -> None:
        assert self.recovered == 1  # what a dead predecessor held is freed first
        super().run_once()
        self.first.set()


def test_worker_frees_a_dead_predecessors_claims_and_runs_at_once():
    outbox = RecoveringOutbox()
    # An hour between runs: only a run at start-up can be seen here.
    worker = OutboxWorker(outbox, interval=3600)  # type: ignore[arg-type]
    worker.start()
    try:
        assert outbox.first.wait(5)
    finally:
        worker.stop()
    assert outbox.recovered == 1 and outbox.runs == 1
