"""Unit (store): phased rollout rules, and the stable per-clinician hash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from smartapp.errors import BadRequest
from smartapp.governance.models import RolloutRule as RolloutRuleRow
from smartapp.governance.rollout import (
    NOT_YET_FOR_YOU,
    RuleInput,
    add_rule,
    bucket,
    decide,
    is_enabled,
    retire_rule,
)
from smartapp.siteconfig import RolloutRule

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
        base = {"site": SITE, "kind": "problem_summary", "enabled": True}
        base.update(fields)
        return add_rule(s, RuleInput(**base), actor="Practitioner/admin1", now=created)


def enabled(db, user: str | None = "Practitioner/1", *, kind="problem_summary", site=SITE, now=NOW):
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


def _row(percentage: float, *, site: str = SITE) -> RolloutRuleRow:
    """A rule as the store holds it, for decide() (pure) without a database."""
    return RolloutRuleRow(
        site=site, kind="problem_summary", enabled=True, percentage_bp=round(percentage * 100)
    )


def test_percentage_holds_over_many_clinicians():
    row = _row(30)
    # decide() is the pure part of is_enabled: 10,000 clinicians without 10,000 queries.
    inside = sum(
        decide(row, site=SITE, kind="problem_summary", fhir_user=f"Practitioner/{i}").enabled
        for i in range(10_000)
    )
    assert 2_800 <= inside <= 3_200


def test_the_store_decides_as_the_pure_rule_does(db):
    """The one DB-backed sweep, kept small: is_enabled reads the rule, decide() places."""
    row = rule(db, percentage=30)
    users = [f"Practitioner/{i}" for i in range(40)]
    from_store = [enabled(db, u).enabled for u in users]
    assert from_store == [
        decide(row, site=SITE, kind="problem_summary", fhir_user=u).enabled for u in users
    ]
    assert 0 < sum(from_store) < len(users)


def test_site_file_and_dashboard_place_clinicians_with_one_hash():
    """50 % in the site file and 50 % on the dashboard reach the same half, not a quarter."""
    row = _row(50)
    file_rule = RolloutRule(percent=50)
    users = [f"Practitioner/{i}" for i in range(10_000)]
    by_dashboard = {
        u for u in users if decide(row, site=SITE, kind="problem_summary", fhir_user=u).enabled
    }
    by_file = {
        u
        for u in users
        if file_rule.includes(u, site=SITE, kind="problem_summary", today=NOW.date())
    }
    assert by_dashboard == by_file
    assert 4_800 <= len(by_file) <= 5_200


def test_a_rule_for_an_unknown_kind_is_refused(db):
    with pytest.raises(BadRequest, match="kind: one of problem_summary"):
        rule(db, kind="care-gaps")


def test_rollout_is_stable_for_one_clinician_and_grows_monotonically(db):
    # Growth over 10,000 clinicians is tests/unit/test_placement.py's (pure); here the store
    # picks the newer rule for a few, and the absolute fhirUser lands in the same place.
    users = [f"Practitioner/{i}" for i in range(40)]
    rule(db, percentage=30, created=NOW - timedelta(days=2))
    first = {u for u in users if enabled(db, u).enabled}
    assert first == {u for u in users if enabled(db, u).enabled}
    for u in list(first)[:5]:
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
    assert not any(enabled(db, f"Practitioner/{i}").enabled for i in range(20))
    rule(db, percentage=100)
    assert all(enabled(db, f"Practitioner/{i}").enabled for i in range(20))
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


def test_placement_is_per_issuer_and_fhir_user_even_under_an_all_sites_rule(db):
    """The same Practitioner id at two EHRs is two people: placed independently."""
    other = "https://b.example/fhir"
    every_site = _row(50, site="*")
    users = [f"Practitioner/{n}" for n in range(10_000)]

    def placed(site: str) -> set[str]:
        return {
            u
            for u in users
            if decide(every_site, site=site, kind="problem_summary", fhir_user=u).enabled
        }

    at_a, at_b = placed(SITE), placed(other)
    assert 4_800 <= len(at_a) <= 5_200 and 4_800 <= len(at_b) <= 5_200
    assert abs(len(at_a & at_b) - 2_500) <= 200  # not one placement shared across EHRs
    assert all(
        bucket(site=SITE, kind="problem_summary", fhir_user=u)
        == bucket(site=SITE + "/", kind="problem_summary", fhir_user=f"{SITE}/{u}")
        for u in users[:20]
    )  # one person, however the issuer and fhirUser are written
    # The store applies the all-sites rule at each issuer, as decide() does (a few).
    rule(db, site="*", percentage=50)
    for u in users[:20]:
        assert enabled(db, u).enabled == (u in at_a)
        assert enabled(db, u, site=other).enabled == (u in at_b)
