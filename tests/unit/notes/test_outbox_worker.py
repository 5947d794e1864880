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
