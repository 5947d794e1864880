"""Unit (store): governance's state cached per process, invalidated by the version row."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import event

from smartapp.governance.rollout import RuleInput, add_rule, retire_rule
from smartapp.governance.state import PolicyCache

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
SITE = "https://a.example/fhir"


def _count(db) -> list[str]:
    seen: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def test_a_change_in_one_process_reaches_the_other_on_its_next_read(database):
    here, there = PolicyCache(database), PolicyCache(database)
    assert here.current().rules == () and there.current().rules == ()
    with database.session() as s:
        rule = add_rule(
            s, RuleInput(site=SITE, kind="problem_summary", enabled=False), actor="a", now=NOW
        )
    assert [r.id for r in there.current().rules] == [rule.id]
    with database.session() as s:
        retire_rule(s, rule.id, actor="a", now=NOW)
    assert here.current().rules == ()


def test_an_unchanged_state_costs_one_statement(database):
    cache = PolicyCache(database)
    first = cache.current()
    seen = _count(database)
    assert cache.current() is first
    assert len(seen) == 1 and "governance_version" in seen[0]
