"""Unit (two apps on one SQLite file, as two processes share PostgreSQL): a chart read
under way in one process is seen by another serving the same launch, which waits for
its snapshot instead of reading the chart again, and reads it itself once the reader
is gone or its lease has lapsed.

The EHR is `GatedEHR` (`load_snapshot` blocking until the test opens its gate); the
waits are driven by the test (an injected clock and pause), never by sleeping.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from smartapp import create_app
from smartapp.db import Database, utcnow
from smartapp.fhir.cache import ChartRead, ChartReads, SnapshotCache
from smartapp.notes import chart_source
from smartapp.smart.views import SESSION_STARTED_EXT
from tests.conftest import close_app, make_settings, test_database_url
from tests.unit.notes.test_chart_prefetch import GatedEHR
from tests.unit.notes.views_support import fixture_snapshot, launch


@pytest.fixture
def ehr(monkeypatch: pytest.MonkeyPatch) -> GatedEHR:
    fake = GatedEHR()
    monkeypatch.setattr(chart_source, "load_snapshot", fake)
    return fake


@pytest.fixture
def two_apps(tmp_path: Path):
    """Two app instances (each its own engine, cache and read-ahead threads) on one store."""
    url = test_database_url(tmp_path)
    apps: list[Flask] = []
    for name in ("a", "b"):
        settings = make_settings(
            tmp_path / name, SMARTAPP_DATABASE_URL=url, SMARTAPP_PREFETCH_CHART="true"
        )
        app = create_app(settings)
        app.config["TESTING"] = True
        if not apps:
            db = app.extensions["smartapp.db"]
            db.drop_all()
            db.upgrade()
        apps.append(app)
    yield apps
    for app in apps:
        close_app(app)


def test_a_read_ahead_in_one_process_is_waited_for_by_another(two_apps, ehr: GatedEHR):
    app_a, app_b = two_apps
    client_b = app_b.test_client()
    context = launch(app_a, client_b, patient="pat-1")
    # The callback ran on A: A reads the chart ahead (its hook, as /callback calls it).
    app_a.extensions[SESSION_STARTED_EXT][-1](context, None)
    assert ehr.began("pat-1").wait(timeout=30)
    # The sidebar's first request reaches B while A's read is under way.
    reads_b: ChartReads = app_b.extensions["smartapp.snapshot_cache"].reads
    waiting = threading.Event()
    pause = reads_b._pause  # noqa: SLF001 - the test learns when B is waiting

    def noted_pause(seconds: float) -> Any:
        waiting.set()
        return pause(seconds)

    reads_b._pause = noted_pause  # noqa: SLF001
    answers: list[Any] = []
    asking = threading.Thread(target=lambda: answers.append(client_b.get("/api/suggestions")))
    asking.start()
    assert waiting.wait(timeout=30), "B read the chart instead of waiting for A's read"
    assert ehr.reads == ["pat-1"]
    ehr.gate("pat-1").set()
    asking.join(timeout=60)
    assert answers and answers[0].status_code == 200, answers
    assert answers[0].get_json()["chart"]["fetchedAt"]
    assert ehr.reads == ["pat-1"]  # read once, for both processes
    db = app_b.extensions["smartapp.db"]
    with db.session() as session:
        assert session.get(ChartRead, context.session_id) is None  # the read has ended


# -- one store, readers driven by the test ----------------------------------------------


class Clock:
    """Monotonic time that moves only when a reader pauses."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pauses = 0
        self.on_pause: list[Any] = []

    def monotonic(self) -> float:
        return self.now

    def pause(self, seconds: float) -> None:
        self.pauses += 1
        self.now += seconds
        for hook in self.on_pause:
            hook()


@pytest.fixture
def db(tmp_path: Path):
    database = Database(f"sqlite:///{tmp_path / 'store.db'}")
    database.create_all()
    yield database
    database.dispose()


def _cache(db: Database, clock: Clock, *, wait_seconds: float = 1.0) -> SnapshotCache:
    reads = ChartReads(db, wait_seconds=wait_seconds, monotonic=clock.monotonic, pause=clock.pause)
    return SnapshotCache(db, ttl_seconds=300, reads=reads)


def _held(db: Database, *, by: str, until_seconds: float, reader: str = "f" * 32) -> None:
    with db.session() as session:
        session.add(
            ChartRead(
                launch_session_id="launch-1",
                claimed_by=by,
                reader=reader,
                claimed_until=utcnow() + timedelta(seconds=until_seconds),
            )
        )


def _loader(loads: list[int]):
    def load():
        loads.append(1)
        return fixture_snapshot()

    return load


ELSEWHERE = "another-host:4242:0123abcd"


def _dead_owner_here() -> str:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return f"{socket.gethostname()[:80]}:{child.pid}:0123abcd"


def test_a_read_whose_process_is_gone_is_not_waited_for(db):
    _held(db, by=_dead_owner_here(), until_seconds=60)
    clock, loads = Clock(), []
    cache = _cache(db, clock)
    cache.get_or_load("launch-1", _loader(loads))
    assert loads == [1] and clock.pauses == 0
    with db.session() as session:  # taken over, then ended with the read
        assert session.get(ChartRead, "launch-1") is None


def test_a_read_whose_lease_lapsed_is_not_waited_for(db):
    _held(db, by=ELSEWHERE, until_seconds=-1)
    clock, loads = Clock(), []
    _cache(db, clock).get_or_load("launch-1", _loader(loads))
    assert loads == [1] and clock.pauses == 0


def test_a_read_that_never_stores_is_waited_for_at_most_the_bound(db):
    _held(db, by=ELSEWHERE, until_seconds=60)
    clock, loads = Clock(), []
    snapshot = _cache(db, clock, wait_seconds=1.0).get_or_load("launch-1", _loader(loads))
    assert loads == [1] and snapshot.patient
    assert 1.0 <= clock.now < 1.2  # polled every 0.1 s until the bound, then read here


def test_the_other_readers_snapshot_ends_the_wait(db):
    _held(db, by=ELSEWHERE, until_seconds=60)
    clock, loads = Clock(), []
    other = SnapshotCache(db, ttl_seconds=300)

    def stored_after_three_looks() -> None:
        if clock.pauses == 3:
            other.put("launch-1", fixture_snapshot())

    clock.on_pause.append(stored_after_three_looks)
    snapshot = _cache(db, clock).get_or_load("launch-1", _loader(loads))
    assert loads == [] and clock.pauses == 3
    assert snapshot.patient == fixture_snapshot().patient


def test_a_reader_that_stops_without_a_snapshot_ends_the_wait(db):
    _held(db, by=ELSEWHERE, until_seconds=60)
    clock, loads = Clock(), []

    def failed_and_released() -> None:
        with db.session() as session:
            session.query(ChartRead).delete()

    clock.on_pause.append(failed_and_released)
    _cache(db, clock).get_or_load("launch-1", _loader(loads))
    assert loads == [1] and clock.pauses == 1


def test_only_one_reader_claims_a_launch_and_renews_only_its_own(db):
    first, second = ChartReads(db, wait_seconds=1), ChartReads(db, wait_seconds=1)
    assert first.claim("launch-1") is True
    assert second.claim("launch-1") is False
    assert second.held_elsewhere("launch-1") and not first.held_elsewhere("launch-1")
    assert second.renew("launch-1") is False and first.renew("launch-1") is True
    second.release("launch-1")  # not its read: nothing happens
    assert second.held_elsewhere("launch-1")
    first.release("launch-1")
    assert not second.held_elsewhere("launch-1")
    assert second.claim("launch-1") is True
