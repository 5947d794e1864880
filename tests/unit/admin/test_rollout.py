"""Unit (store): phased rollout rules, and the stable per-clinician hash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from smartapp.admin.rollout import (
    NOT_YET_FOR_YOU,
    RuleInput,
    add_rule,
    bucket,
    decide,
    is_enabled,
    retire_rule,
    rules_in_force,
)
from smartapp.errors import BadRequest

SITE = "https://a.example/fhir"
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path):
    from smartapp.db import Database

    database = Database(f"sqlite:///{tmp_path / 'rollout.db'}")
    database.create_all()
    yield database
    database.dispose()


def rule(db, *, created: datetime = NOW - timedelta(days=1), **fields):
    with db.session() as s:
        base = {"site": SITE, "kind": "summary", "enabled": True}
        base.update(fields)
        return add_rule(s, RuleInput(**base), actor="Practitioner/admin1", now=created)


def enabled(db, user: str | None = "Practitioner/1", *, kind="summary", site=SITE, now=NOW):
    with db.session() as s:
        return is_enabled(s, site=site, kind=kind, fhir_user=user, now=now)


def test_no_rules_means_enabled(db):
    decision = enabled(db)
    assert decision.enabled and decision.rule_id is None


def test_a_site_can_turn_a_kind_off(db):
    rule(db, enabled=False)
    assert not enabled(db).enabled
    assert enabled(db, kind="care_gaps").enabled  # another kind is untouched
    assert enabled(db, site="https://b.example/fhir").enabled  # another site too


def test_percentage_holds_over_many_clinicians(db):
    rule(db, percentage=30)
    with db.session() as s:
        rules = rules_in_force(s)  # read once; placing 10,000 clinicians is pure
    inside = sum(
        decide(rules, site=SITE, kind="summary", fhir_user=f"Practitioner/{i}", now=NOW).enabled
        for i in range(10_000)
    )
    assert 2_800 <= inside <= 3_200
    # The store's answer is the pure one.
    assert enabled(db, "Practitioner/7") == decide(
        rules, site=SITE, kind="summary", fhir_user="Practitioner/7", now=NOW
    )


def test_rollout_is_stable_for_one_clinician_and_grows_monotonically(db):
    users = [f"Practitioner/{i}" for i in range(500)]
    rule(db, percentage=30, created=NOW - timedelta(days=2))
    first = {u for u in users if enabled(db, u).enabled}
    again = {u for u in users if enabled(db, u).enabled}
    assert first == again
    # The absolute form of the same fhirUser lands in the same place.
    for u in list(first)[:20]:
        assert enabled(db, f"{SITE}/{u}").enabled
    rule(db, percentage=50)
    wider = {u for u in users if enabled(db, u).enabled}
    assert first <= wider and len(wider) > len(first)


def test_the_bucket_does_not_change_between_releases():
    # sha256("smartapp-rollout-v1|https://a.example/fhir|summary|Practitioner/1")[:8] % 10000;
    # changing it would silently move clinicians in and out of every partial rollout.
    assert bucket(site=SITE, kind="summary", fhir_user="Practitioner/1") == 664
    assert bucket(site=SITE + "/", kind="summary", fhir_user="Practitioner/1") == 664


def test_left_out_clinician_is_told_why(db):
    rule(db, percentage=0.01)
    outside = next(
        u for u in (f"Practitioner/{i}" for i in range(100)) if not enabled(db, u).enabled
    )
    decision = enabled(db, outside)
    assert decision.reason == NOT_YET_FOR_YOU
    assert not enabled(db, None).enabled  # unknown user: not placed in a partial rollout


def test_zero_and_hundred_percent(db):
    rule(db, percentage=0, created=NOW - timedelta(days=2))
    assert not any(enabled(db, f"Practitioner/{i}").enabled for i in range(200))
    rule(db, percentage=100)
    assert all(enabled(db, f"Practitioner/{i}").enabled for i in range(200))
    assert enabled(db, None).enabled


def test_effective_dates(db):
    rule(db, enabled=False, effective_from=NOW + timedelta(days=1))
    assert enabled(db).enabled  # not yet in force
    assert not enabled(db, now=NOW + timedelta(days=2)).enabled
    rule(db, kind="care_gaps", enabled=False, effective_to=NOW - timedelta(hours=1))
    assert enabled(db, kind="care_gaps").enabled  # expired


def test_most_specific_rule_wins_then_newest(db):
    rule(db, site="*", kind="*", enabled=False, created=NOW - timedelta(days=5))
    assert not enabled(db).enabled
    rule(db, kind="*", enabled=True, created=NOW - timedelta(days=4))
    assert enabled(db).enabled  # the site's rule beats the global one
    rule(db, enabled=False, created=NOW - timedelta(days=3))
    assert not enabled(db).enabled  # site + kind beats site
    rule(db, enabled=True, created=NOW - timedelta(days=2))
    assert enabled(db).enabled  # the newest of equals


def test_retired_rule_no_longer_applies(db):
    row = rule(db, enabled=False)
    with db.session() as s:
        retire_rule(s, row.id, actor="Practitioner/admin1", now=NOW)
    assert enabled(db).enabled


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"site": "not-a-url"}, "site"),
        ({"percentage": 101}, "percentage"),
        ({"kind": ""}, "kind"),
        (
            {"effective_from": NOW, "effective_to": NOW - timedelta(days=1)},
            "effective_to",
        ),
    ],
)
def test_bad_rules_are_refused_naming_the_field(db, fields, message):
    with pytest.raises(BadRequest, match=message):
        rule(db, **fields)
