"""Unit (pure functions): the two-proportion z-test and site-level variance detection."""

from __future__ import annotations

import pytest

from smartapp.admin.metrics import MetricsGroup, site_variance, two_proportion_z


def site(key: str, shown: int, used: int, flagged: int = 0) -> MetricsGroup:
    """A site whose `used` suggestions were accepted, `flagged` flagged, the rest rejected."""
    return MetricsGroup(
        key=key,
        shown=shown,
        accepted=used,
        edited=0,
        rejected=shown - used - flagged,
        flagged=flagged,
        acceptance_rate=used / shown,
        median_edit_distance=None,
        median_seconds_to_decision=None,
    )


def test_two_proportion_z_matches_hand_computation():
    # p1 = .3, p2 = .5, pooled .4, se = sqrt(.4 * .6 * (1/100 + 1/100)) = 0.0692820
    assert two_proportion_z(30, 100, 50, 100) == pytest.approx(-2.886751, abs=1e-6)
    assert two_proportion_z(50, 100, 30, 100) == pytest.approx(2.886751, abs=1e-6)


def test_two_proportion_z_edge_cases():
    assert two_proportion_z(0, 0, 5, 10) is None
    assert two_proportion_z(5, 10, 0, 0) is None
    # Everyone accepted on both sides: no variance, no difference.
    assert two_proportion_z(10, 10, 20, 20) == 0.0


def test_variance_flags_the_seeded_outlier_site_and_no_other():
    groups = [site(f"https://site{i}.example/fhir", 100, 60) for i in range(6)]
    groups.append(site("https://outlier.example/fhir", 100, 20))
    # A tiny site with a wild rate is noted, not flagged: 5 suggestions prove nothing.
    groups.append(site("https://tiny.example/fhir", 5, 0))
    rows = {r.key: r for r in site_variance(groups, min_shown=30)}

    assert [k for k, r in rows.items() if r.outlier] == ["https://outlier.example/fhir"]
    outlier = rows["https://outlier.example/fhir"]
    # Rest: 6 x 60 of 600 + 0 of 5 = 360/605; pooled 380/705.
    rest = 360 / 605
    pooled = 380 / 705
    se = (pooled * (1 - pooled) * (1 / 100 + 1 / 605)) ** 0.5
    assert outlier.rest_rate == pytest.approx(rest)
    assert outlier.z == pytest.approx((0.2 - rest) / se)
    assert outlier.z < -1.96
    normal = rows["https://site0.example/fhir"]
    assert abs(normal.z) < 1.96 and not normal.outlier and normal.note is None
    tiny = rows["https://tiny.example/fhir"]
    assert not tiny.outlier and tiny.note == "fewer than 30 shown at this site"


def test_variance_on_flag_rate():
    # Eight sites at 2 %: with fewer, one loud site drags the pooled rest far enough that
    # the quiet ones would look unusual too.
    groups = [site(f"https://s{i}.example/fhir", 200, 100, flagged=4) for i in range(8)]
    groups.append(site("https://flaggy.example/fhir", 200, 100, flagged=30))
    rows = site_variance(groups, metric="flag")
    assert [r.key for r in rows if r.outlier] == ["https://flaggy.example/fhir"]


def test_variance_with_one_site_has_nothing_to_compare():
    rows = site_variance([site("https://only.example/fhir", 500, 100)])
    assert rows[0].z is None and not rows[0].outlier
    assert rows[0].note == "fewer than 30 shown at the other sites"


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="metric"):
        site_variance([site("https://a.example/fhir", 10, 5)], metric="vibes")
