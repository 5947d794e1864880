"""Unit (store): the safety measures by age band, sex, site, kind and engine."""

from __future__ import annotations

from datetime import date

import pytest

from smartapp.admin.safety import safety_summary
from smartapp.feedback.demographics import age_band, demographics
from tests.unit.admin.conftest import bearer
from tests.unit.admin.seed import LLM, RULES, SITE_A, SITE_B, W47, W48, Seeded, add_suggestion

#: (kind, site, engine, band, sex, latest decision or None, dropped, unverified, hits)
ROWS = (
    ("medications", SITE_A, RULES, "65-79", "female", "flag", 0, 0, 2),
    ("medications", SITE_A, RULES, "65-79", "female", "accept", 1, 0, 1),
    ("medications", SITE_B, LLM, "80+", "male", None, 2, 1, 0),
    ("problem_summary", SITE_B, LLM, "18-44", "male", "flag", 0, 1, 0),
    ("problem_summary", SITE_A, RULES, None, None, "reject", 0, 0, None),  # before 0017
)


@pytest.fixture
def seeded(database):
    with database.session() as s:
        for n, (kind, site, engine, band, sex, action, dropped, unverified, hits) in enumerate(
            ROWS, start=1
        ):
            decisions = ((action, 10, None),) if action else ()
            row = add_suggestion(s, Seeded(kind, site, engine, W47, decisions), number=n)
            row.age_band, row.sex, row.safety_hits = band, sex, hits
            row.verification = {
                "checked": 3,
                "passed": 3 - dropped - unverified,
                "dropped": dropped,
                "unverifiedShown": unverified,
            }
    return database


def _by(section, by):
    return {g["key"]: g for g in section[by]}


def test_flags_drops_unverified_and_hits_by_age_band_and_sex(seeded):
    with seeded.session() as s:
        section = safety_summary(s)
    bands = _by(section, "age_band")
    assert list(bands) == ["18-44", "65-79", "80+", "not recorded"]
    expected = {
        "shown": 2,
        "flagged": 1,
        "flag_rate": 0.5,
        "statements_checked": 6,
        "statements_dropped": 1,
        "statements_unverified": 0,
        "safety_hits": 3,
        "with_safety_hits": 2,
    }
    assert {k: bands["65-79"][k] for k in expected} == expected
    assert (bands["80+"]["statements_dropped"], bands["80+"]["statements_unverified"]) == (2, 1)
    # Rows shown before the hits were recorded say so, not zero.
    assert bands["not recorded"]["safety_hits"] is None
    sexes = _by(section, "sex")
    assert {k: (g["shown"], g["flagged"]) for k, g in sexes.items()} == {
        "female": (2, 1),
        "male": (2, 1),
        "not recorded": (1, 0),
    }
    kinds = _by(section, "kind")
    assert kinds["medications"]["safety_hits"] == 3
    assert kinds["problem_summary"]["safety_hits"] == 0  # one recorded row, no hit
    assert set(_by(section, "engine")) == {"builtin-rules 1.0.0", "llm m@2"}
    assert set(_by(section, "site")) == {SITE_A, SITE_B}


def test_a_group_is_tested_against_the_others_only_when_both_are_large_enough(seeded):
    with seeded.session() as s:
        small = safety_summary(s)
        tested = safety_summary(s, min_shown=1)
    assert all(g["flag_z"] is None and not g["flag_outlier"] for g in small["sex"])
    female = _by(tested, "sex")["female"]
    assert female["flag_rate_rest"] == pytest.approx(1 / 3, abs=1e-4)
    assert female["flag_z"] is not None and not female["flag_outlier"]


def test_the_period_is_the_shown_time(seeded):
    with seeded.session() as s:
        assert all(safety_summary(s, start=W48)[by] == [] for by in ("age_band", "sex"))


@pytest.mark.parametrize(
    ("born", "band"),
    [
        ("2008-12-04", "0-17"),  # 18 tomorrow
        ("2008-12-03", "18-44"),
        ("1981-12-04", "18-44"),
        ("1981-12-03", "45-64"),
        ("1961-12-03", "65-79"),
        ("1946-12-04", "65-79"),
        ("1946-12-03", "80+"),
        ("1946", "80+"),
        (None, "unknown"),
    ],
)
def test_age_bands_count_whole_years_on_the_day_the_chart_was_read(born, band):
    patient = {"birthDate": born} if born else {}
    assert demographics(patient, date(2026, 12, 3)).age_band == band


def test_sex_is_the_administrative_gender_code_or_unknown():
    day = date(2026, 12, 3)
    assert demographics({"gender": "female"}, day).sex == "female"
    assert demographics({"gender": "other"}, day).sex == "other"
    assert demographics({"gender": "Female "}, day).sex == "unknown"
    assert demographics({}, day).sex == "unknown"
    assert age_band(-1) == "unknown"


def test_metrics_api_and_dashboard_carry_the_safety_section(admin_app, api, identity):
    with admin_app.extensions["smartapp.db"].session() as s:
        add_suggestion(s, Seeded("medications", SITE_A, RULES, W47, (("flag", 5, None),)), number=1)
        s.flush()
    body = api.get("/admin/api/metrics", headers=bearer()).get_json()
    [group] = body["safety"]["age_band"]
    assert (group["key"], group["flagged"], group["flag_rate"]) == ("not recorded", 1, 1.0)
    assert set(body["safety"]) == {"min_shown", "age_band", "sex", "site", "kind", "engine"}
    identity.sign_in("Practitioner/admin1")
    page = admin_app.test_client().get("/admin").get_data(as_text=True)
    assert "Is it safe" in page and 'id="safety-age_band"' in page
