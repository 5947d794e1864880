"""Unit: the built-in rules on a chart whose Observation search stopped at the page cap:
newest first, the latest is known; otherwise no rule says what the latest value is, or
whether it is at goal, without saying the read was partial."""

from __future__ import annotations

from dataclasses import replace

import pytest

from smartapp.fhir.snapshot import ChartSnapshot, SnapshotProblem
from smartapp.siteconfig import CareGapRules
from smartapp.suggestions.builtin import BuiltinEngine
from smartapp.suggestions.facts import ChartFacts

from .conftest import load_chart

ENGINE = BuiltinEngine()
CONFIG = {"care_gaps": CareGapRules(packs=())}


def truncated(name: str, *, newest_first: bool) -> ChartSnapshot:
    problem = SnapshotProblem(
        code="truncated",
        resource_type="Observation",
        detail="Observation (vital-signs): read 400 of 538",
        newest_first=newest_first,
    )
    return replace(load_chart(name), problems=(problem,))


def texts(snapshot: ChartSnapshot, kind: str) -> list[str]:
    return [s.text for sug in ENGINE.suggest(snapshot, kind, CONFIG) for s in sug.statements]


def test_newest_known_only_when_complete_or_read_newest_first():
    assert ChartFacts(load_chart("diabetes_hypertension")).newest_known("Observation")
    assert ChartFacts(truncated("diabetes_hypertension", newest_first=True)).newest_known(
        "Observation"
    )
    facts = ChartFacts(truncated("diabetes_hypertension", newest_first=False))
    assert not facts.newest_known("Observation")
    assert facts.newest_known("Condition")
    failed = replace(
        load_chart("diabetes_hypertension"),
        problems=(SnapshotProblem(code="search_failed", resource_type="Observation", detail="x"),),
    )
    assert not ChartFacts(failed).newest_known("Observation")


@pytest.mark.parametrize("kind", ["problem_summary", "care_gaps", "assessment_plan"])
def test_a_newest_first_truncation_changes_nothing_about_the_latest(kind):
    full = texts(load_chart("diabetes_hypertension"), kind)
    cut = texts(truncated("diabetes_hypertension", newest_first=True), kind)
    latest = [t for t in full if "latest" in t or "goal" in t]
    assert latest and all(t in cut for t in latest)


def test_problem_summary_says_latest_read_when_the_newest_may_be_missing():
    summary = texts(truncated("diabetes_hypertension", newest_first=False), "problem_summary")
    assert (
        "Essential (primary) hypertension, onset 2024-01-02; "
        "latest read blood pressure 103/66 mmHg on 2026-01-01"
    ) in summary
    assert not any(" latest blood pressure" in t or " latest HbA1c" in t for t in summary)


def test_blood_pressure_control_is_not_judged_from_an_unsorted_partial_read():
    full = texts(load_chart("hypertension_history"), "care_gaps")
    assert any("at or above the site's threshold" in t for t in full)
    cut = texts(truncated("hypertension_history", newest_first=False), "care_gaps")
    assert not any("blood pressure" in t.lower() and "threshold" in t for t in cut)


def test_assessment_says_nothing_about_goals_or_result_options_from_an_unsorted_read():
    cut = texts(truncated("diabetes_hypertension", newest_first=False), "assessment_plan")
    assert "BP 103/66 mmHg on 2026-01-01" in cut
    # Options from results need the newest results; one from age and the medication list
    # (complete here) does not.
    from_results = [t for t in cut if not t.startswith("Consider a moderate-intensity statin")]
    assert not any("goal" in t or t.startswith("Consider") or " due: " in t for t in from_results)
