"""Unit: the per-launch snapshot cache, on SQLite and (if configured) on PostgreSQL."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text

from smartapp.db import MODEL_MODULES, Database
from smartapp.fhir.cache import CachedSnapshot, SnapshotCache
from smartapp.fhir.parsing import build_snapshot
from smartapp.fhir.snapshot import SnapshotProblem

from .fakes import chart_fixtures

START = datetime(2026, 11, 3, 9, 30, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def _sqlite(tmp_path: Path):
    database = Database(f"sqlite:///{tmp_path / 'cache.db'}")
    database.create_all()
    yield database
    database.dispose()


def _postgres(url: str):
    # The PostgreSQL server is shared: this test gets a schema of its own and drops it.
    schema = f"fhir_cache_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in url else "?"
    database = Database(f"{url}{sep}options={quote(f'-csearch_path={schema}')}")
    try:
        database.create_all()
        yield database
    finally:
        database.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


BACKENDS = ["sqlite"]
if os.environ.get("SMARTAPP_TEST_DATABASE_URL", "").startswith("postgresql"):
    BACKENDS.append("postgresql")


@pytest.fixture(params=BACKENDS)
def database(request, tmp_path):
    if request.param == "sqlite":
        yield from _sqlite(tmp_path)
    else:
        yield from _postgres(os.environ["SMARTAPP_TEST_DATABASE_URL"])


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def cache(database, clock):
    return SnapshotCache(database, ttl_seconds=300, clock=clock)


def make_snapshot(**kwargs):
    return build_snapshot(
        chart_fixtures(),
        patient_id="pat-1",
        encounter_id="enc-1",
        problems=[SnapshotProblem(code="truncated", resource_type="Observation", detail="cap")],
        not_granted=("Immunization",),
        request_count=2,
        fetched_at=START,
        **kwargs,
    )


def test_the_cache_module_declares_its_table():
    assert "smartapp.fhir.cache" in MODEL_MODULES
    assert CachedSnapshot.__tablename__ == "fhir_snapshot_cache"


def test_put_then_get_returns_an_equal_snapshot(cache):
    snapshot = make_snapshot()
    cache.put("launch-a", snapshot)
    got = cache.get("launch-a")
    assert got == snapshot
    assert got.fetched_at == START
    assert got.get("Medication/med-rel") is not None
    assert cache.get("launch-b") is None


def test_entries_expire_after_the_ttl_and_are_deleted(cache, clock, database):
    cache.put("launch-a", make_snapshot())
    clock.now = START + timedelta(seconds=299)
    assert cache.get("launch-a") is not None
    clock.now = START + timedelta(seconds=300)
    assert cache.get("launch-a") is None
    with database.session() as session:
        assert session.get(CachedSnapshot, "launch-a") is None


def test_invalidate_removes_only_that_launch(cache):
    cache.put("launch-a", make_snapshot())
    cache.put("launch-b", make_snapshot())
    cache.invalidate("launch-a")
    cache.invalidate("launch-never")
    assert cache.get("launch-a") is None
    assert cache.get("launch-b") is not None


def test_put_replaces_and_restarts_the_ttl(cache, clock):
    cache.put("launch-a", make_snapshot())
    clock.now = START + timedelta(seconds=200)
    newer = build_snapshot(chart_fixtures()[:3], patient_id="pat-1", fetched_at=clock.now)
    cache.put("launch-a", newer)
    clock.now = START + timedelta(seconds=400)
    got = cache.get("launch-a")
    assert got == newer


def test_purge_expired_deletes_every_expired_snapshot(cache, clock, database):
    cache.put("launch-a", make_snapshot())
    clock.now = START + timedelta(seconds=100)
    cache.put("launch-b", make_snapshot())
    clock.now = START + timedelta(seconds=350)
    assert cache.purge_expired() == 1
    with database.session() as session:
        assert session.get(CachedSnapshot, "launch-a") is None
    assert cache.get("launch-b") is not None
    assert cache.purge_expired() == 0


def test_an_unreadable_entry_is_a_miss(cache, database):
    cache.put("launch-a", make_snapshot())
    with database.session() as session:
        session.get(CachedSnapshot, "launch-a").data = '{"not": "a snapshot"}'
    assert cache.get("launch-a", reread=True) is None
    with database.session() as session:
        assert session.get(CachedSnapshot, "launch-a") is None


def test_get_or_load_loads_once_until_refresh(cache, clock):
    loads = []

    def load():
        loads.append(1)
        return make_snapshot()

    first = cache.get_or_load("launch-a", load)
    assert cache.get_or_load("launch-a", load) == first
    assert len(loads) == 1
    cache.get_or_load("launch-a", load, refresh=True)
    assert len(loads) == 2
    clock.now = START + timedelta(seconds=301)
    cache.get_or_load("launch-a", load)
    assert len(loads) == 3


def test_a_failed_load_caches_nothing(cache):
    def load():
        raise RuntimeError("EHR down")

    with pytest.raises(RuntimeError):
        cache.get_or_load("launch-a", load)
    assert cache.get("launch-a") is None


def test_ttl_must_be_positive(database):
    with pytest.raises(ValueError):
        SnapshotCache(database, ttl_seconds=0)


def test_a_snapshot_is_kept_parsed_in_memory_until_it_expires(cache, database, clock):
    from sqlalchemy import event

    snapshot = make_snapshot()
    cache.put("launch-1", snapshot)
    seen: list[str] = []
    event.listen(database.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    assert cache.get("launch-1") is snapshot  # the parsed object: no read, no parse
    assert seen == []
    reread = cache.get("launch-1", reread=True)  # another process refreshed: the store's
    assert reread is not None and reread is not snapshot and len(seen) == 1
    clock.now = START + timedelta(seconds=301)
    assert cache.get("launch-1") is None  # expired in memory and in the store
    cache.put("launch-1", snapshot)
    cache.invalidate("launch-1")
    assert cache.get("launch-1") is None
