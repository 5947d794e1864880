"""Unit: a suggestion first shown keeps the patient's age band and sex and its safety hits.

The real app and drafter with the fixture chart (patient pat-1: female, born 1961-04-12).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from sqlalchemy import select

from smartapp.feedback.models import ShownSuggestion
from smartapp.feedback.store import safety_hits
from smartapp.suggestions.interfaces import EngineInfo, Statement, Suggestion
from smartapp.suggestions.safety import rules
from tests.unit.notes.test_views_note import _api, ehr  # noqa: F401 - a fixture
from tests.unit.notes.views_support import fixture_snapshot, launch


def test_first_show_records_band_and_sex_and_no_birth_date(app, client, ehr):  # noqa: F811
    context = launch(app, client)
    shown = _api(client, context, "GET", "/api/suggestions").get_json()["suggestions"]
    assert shown
    chart_day = fixture_snapshot().fetched_at  # read now, as the app reads the chart
    assert chart_day is not None and date(2026, 4, 12) <= chart_day.date() < date(2041, 4, 12)
    expected_band = "65-79"  # 65 from 12 April 2026, 80 from 2041
    with app.extensions["smartapp.db"].session() as s:
        rows = s.scalars(select(ShownSuggestion)).all()
    assert {(r.age_band, r.sex) for r in rows} == {(expected_band, "female")}
    assert all(r.safety_hits is not None and r.safety_hits >= 0 for r in rows)


def test_safety_hits_count_statements_of_the_safety_table_only():
    rule = rules()[0]
    statements = (
        Statement(text="A safety hit", citations=(), rule_id=rule.id),
        Statement(text="A care gap", citations=(), rule_id="hba1c_interval"),
        Statement(text="A fact", citations=()),
    )
    suggestion = Suggestion(
        kind="medications",
        title="Medications",
        statements=statements,
        engine=EngineInfo(name="builtin-rules", version="1"),
    )
    assert safety_hits(suggestion) == 1
    assert safety_hits(replace(suggestion, statements=statements[1:])) == 0
