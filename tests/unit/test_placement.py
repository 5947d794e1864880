"""Unit (pure): the one placement hash over 10,000 clinicians — shares, growth, independence.

No store: `smartapp.placement` is a pure function, so its statistics are checked over many
ids at the cost of hashing them; tests/unit/admin/test_rollout.py keeps the store's side
(rules chosen and read) on a few clinicians.
"""

from __future__ import annotations

import pytest

from smartapp.placement import BUCKETS, bucket, placed_within

SITE = "https://a.example/fhir"
KIND = "problem_summary"
USERS = [f"Practitioner/{n}" for n in range(10_000)]


def placed(share_bp: int, *, site: str = SITE, kind: str = KIND) -> set[str]:
    return {u for u in USERS if placed_within(site=site, kind=kind, fhir_user=u, share_bp=share_bp)}


@pytest.mark.parametrize("share_bp", [1_000, 3_000, 5_000, 9_000])
def test_a_share_reaches_that_share_of_10000_clinicians_within_2_points(share_bp):
    assert abs(len(placed(share_bp)) - share_bp) <= 200  # ±2 % of 10,000


def test_buckets_spread_evenly_over_the_range():
    counts = [0] * 10
    for u in USERS:
        counts[bucket(site=SITE, kind=KIND, fhir_user=u) * 10 // BUCKETS] += 1
    assert all(800 <= c <= 1_200 for c in counts), counts


def test_raising_a_share_keeps_everyone_already_in():
    thirty, fifty = placed(3_000), placed(5_000)
    assert thirty < fifty


def test_zero_and_all():
    assert placed(0) == set()
    assert placed(BUCKETS) == set(USERS)


def test_placement_is_drawn_afresh_per_kind_and_per_site():
    """Two 50 % rollouts overlap by about a quarter, not by half: independent draws."""
    here = placed(5_000)
    for other in (placed(5_000, kind="care_gaps"), placed(5_000, site="https://b.example/fhir")):
        assert abs(len(here & other) - 2_500) <= 200
