"""Unit (store; Redis on loopback where SMARTAPP_TEST_REDIS_URL is set): the cross-process
signal that governance changed. With a signal, a warm policy snapshot costs no statement
and a committed change reaches the other processes on their next request; the version row
stays the truth (read when the signal moved, cannot answer, or every RECHECK_SECONDS)."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime

import pytest
from sqlalchemy import event

from smartapp.governance.rollout import RuleInput, add_rule
from smartapp.governance.signal import RECHECK_SECONDS, RedisSignal, attach
from smartapp.governance.state import PolicyCache

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
SITE = "https://a.example/fhir"


class CountingSignal:
    """An in-memory signal shared by the "processes" of a test (Redis's INCR and GET)."""

    def __init__(self) -> None:
        self.value = 0
        self.announced = 0
        self.up = True

    def stamp(self) -> str | None:
        return str(self.value) if self.up else None

    def announce(self) -> None:
        self.announced += 1
        if self.up:
            self.value += 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _count(db) -> list[str]:
    seen: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def _add_rule(database, kind: str = "problem_summary") -> str:
    with database.session() as s:
        rule = add_rule(s, RuleInput(site=SITE, kind=kind, enabled=False), actor="a", now=NOW)
        return rule.id


@pytest.fixture
def signal(database):
    shared = CountingSignal()
    attach(database, shared)
    yield shared
    attach(database, None)


def test_with_a_signal_a_warm_snapshot_costs_no_statement(database, signal):
    cache = PolicyCache(database, signal=signal)
    first = cache.current()
    seen = _count(database)
    assert cache.current() is first and cache.current() is first
    assert seen == []


def test_a_committed_change_is_announced_once_and_a_rolled_back_one_never(database, signal):
    _add_rule(database)
    assert signal.announced == 1
    with pytest.raises(RuntimeError), database.session() as s:
        add_rule(s, RuleInput(site=SITE, kind="allergies", enabled=False), actor="a", now=NOW)
        s.flush()  # the counter is bumped in the transaction, which then fails
        raise RuntimeError("the request failed after the write")
    assert signal.announced == 1
    _add_rule(database, "allergies")
    assert signal.announced == 2


def test_a_change_in_one_process_drops_the_others_snapshot_on_their_next_request(
    database, signal
):
    clock = Clock()
    here = PolicyCache(database, signal=signal, clock=clock)
    there = PolicyCache(database, signal=signal, clock=clock)
    assert here.current().rules == () and there.current().rules == ()
    rule = _add_rule(database)  # "here" writes; the clock does not move
    assert [r.id for r in there.current().rules] == [rule]
    seen = _count(database)
    assert there.current().rules[0].id == rule and seen == []  # warm again


def test_without_an_answer_from_the_signal_the_version_row_is_read_every_time(
    database, signal
):
    cache = PolicyCache(database, signal=signal)
    cache.current()
    signal.up = False  # Redis away
    seen = _count(database)
    cache.current()
    assert len(seen) == 1 and "governance_version" in seen[0]
    rule = _add_rule(database)  # the increment is lost: the row still tells
    assert [r.id for r in cache.current().rules] == [rule]


def test_a_lost_increment_delays_a_change_by_the_recheck_at_most(database, signal):
    clock = Clock()
    cache = PolicyCache(database, signal=signal, clock=clock)
    cache.current()
    attach(database, None)  # a writer whose increment never reached Redis
    rule = _add_rule(database)
    assert cache.current().rules == ()  # the signal has not moved: trusted for now
    clock.now += RECHECK_SECONDS
    assert [r.id for r in cache.current().rules] == [rule]


def test_an_unreachable_redis_answers_none_and_warns_once(caplog):
    signal = RedisSignal("redis://127.0.0.1:1/0")  # nothing listens on port 1
    with caplog.at_level(logging.WARNING, logger="smartapp.governance.signal"):
        assert signal.stamp() is None
        signal.announce()  # swallowed: the change is committed, the row tells
        assert signal.stamp() is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "reading the store's counter" in warnings[0].getMessage()
    assert "127.0.0.1" not in repr(signal)


def _redis_url() -> str:
    url = os.environ.get("SMARTAPP_TEST_REDIS_URL")
    if not url:
        pytest.skip("SMARTAPP_TEST_REDIS_URL is not set")
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at SMARTAPP_TEST_REDIS_URL ({url})")
    return url


def test_with_redis_a_change_reaches_every_process_without_a_statement_between(database):
    url = _redis_url()
    writer, reader = RedisSignal(url), RedisSignal(url)
    attach(database, writer)
    try:
        there = PolicyCache(database, signal=reader)
        assert there.current().rules == ()
        seen = _count(database)
        assert there.current().rules == () and seen == []
        before = reader.stamp()
        rule = _add_rule(database)
        assert reader.stamp() != before
        assert [r.id for r in there.current().rules] == [rule]
    finally:
        attach(database, None)


def test_the_app_announces_dashboard_changes_through_redis(tmp_path):
    from smartapp import create_app
    from tests.conftest import make_settings

    url = _redis_url()
    app = create_app(make_settings(tmp_path, SMARTAPP_REDIS_URL=url))
    database = app.extensions["smartapp.db"]
    try:
        database.upgrade()
        reader = RedisSignal(url)
        before = reader.stamp()
        _add_rule(database, kind="care_gaps")
        assert reader.stamp() != before
    finally:
        app.extensions["smartapp.engines"].close()
        database.dispose()
