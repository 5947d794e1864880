"""Unit (store): governance's state cached per process, invalidated by the version row."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import event

from smartapp.governance.registry import ChangeControl, engaged_switches
from smartapp.governance.rollout import RuleInput, add_rule, retire_rule
from smartapp.governance.state import PolicyCache, load_state

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


def _switch(database, scope: str, target: str, engaged: bool, at: datetime = NOW) -> None:
    with database.session() as s:
        ChangeControl.set_kill_switch(
            s, scope=scope, target=target, engaged=engaged, actor="a", reason="unsafe", now=at
        )


def test_a_changed_state_reloads_in_three_statements(database):
    """The version row brings the kill switches; the rules and active versions follow."""
    cache = PolicyCache(database)
    cache.current()
    with database.session() as s:
        rule = add_rule(
            s, RuleInput(site=SITE, kind="problem_summary", enabled=False), actor="a", now=NOW
        )
    with database.session() as s:
        other = add_rule(
            s, RuleInput(site=SITE, kind="care_gaps", enabled=True), actor="a", now=NOW
        )
    _switch(database, "kind", "care_gaps", True)
    _switch(database, "engine", "llm", True)
    seen = _count(database)
    state = cache.current()
    assert len(seen) <= 3, "\n".join(seen)
    # The warm check reads the version row alone; the reload reads the rest.
    assert "governance_version" in seen[0] and "rollout_rule" not in seen[0]
    # Each rule once, however many switches are engaged beside it.
    assert sorted(r.id for r in state.rules) == sorted([rule.id, other.id])
    assert state.killed == {("kind", "care_gaps"), ("engine", "llm")}


def test_a_state_with_no_rules_and_no_switches_reads_empty(database):
    with database.session() as s:
        state = load_state(s)
    assert state.version == 0 and state.rules == () and state.killed == frozenset()


def test_the_latest_setting_of_each_switch_is_in_force(database):
    _switch(database, "kind", "care_gaps", True)
    _switch(database, "kind", "care_gaps", False)  # released: off again
    _switch(database, "engine", "llm", False)
    _switch(database, "engine", "llm", True)  # thrown after a release
    _switch(database, "kind", "problem_summary", True)
    with database.session() as s:
        state = load_state(s)
        # The one statement agrees with the registry's own reading of the switch history.
        assert state.killed == engaged_switches(s)
        assert state.killed == {("engine", "llm"), ("kind", "problem_summary")}
    assert state.version is not None and state.version >= 5
    state = PolicyCache(database).current()
    assert not state.is_killed(kind="care_gaps", engine="builtin-rules")
    assert state.is_killed(kind="care_gaps", engine="llm")
