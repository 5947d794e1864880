"""One fact, one card (smartapp.suggestions.crossref), over the clinical fixture charts.

Drafted as the sidebar drafts them: every kind of the default site configuration through
`SuggestionService`, grounding verification on.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date
from pathlib import Path

import pytest

from smartapp.kinds import KINDS
from smartapp.siteconfig import load_site_config
from smartapp.suggestions.builtin import BuiltinEngine
from smartapp.suggestions.charts import chart_snapshot, draft_chart
from smartapp.suggestions.crossref import PATIENT_FACING, deduplicate, stated_results
from smartapp.suggestions.grounding import GroundingVerifier, verify_suggestions
from smartapp.suggestions.interfaces import Suggestion
from smartapp.suggestions.registry import SuggestionService

CHARTS = Path(__file__).resolve().parents[2] / "fixtures" / "clinical"
AS_OF = date(2026, 11, 23)


def bundle(name: str) -> dict:
    return json.loads((CHARTS / f"{name}.json").read_text(encoding="utf-8"))


def cards_stating(suggestions: list[Suggestion]) -> dict[str, list[str]]:
    """Observation id -> the titles of the clinician's cards that state it as a fact."""
    found: dict[str, list[str]] = defaultdict(list)
    for suggestion in suggestions:
        if suggestion.kind in PATIENT_FACING:
            continue
        stated = {
            r
            for statement in suggestion.statements
            if statement.rule_id is None  # a safety flag shows its evidence where it is raised
            for r in stated_results(statement)
        }
        for reference in sorted(stated):
            found[reference].append(suggestion.title)
    return found


@pytest.mark.parametrize("name", sorted(p.stem for p in CHARTS.glob("*.json")))
def test_each_observation_is_stated_as_a_fact_in_at_most_one_card(name: str):
    _, run = draft_chart(bundle(name), as_of=AS_OF)
    stated = cards_stating(run.suggestions)
    assert {ref: titles for ref, titles in stated.items() if len(titles) > 1} == {}


def test_the_fifteen_problem_chart_states_every_result_once_and_points_to_it_elsewhere():
    snapshot = chart_snapshot(bundle("fifteen_problems"), AS_OF)
    engine = BuiltinEngine()
    verifier = GroundingVerifier(snapshot)
    drafted = verify_suggestions(
        [s for kind in KINDS for s in engine.suggest(snapshot, kind, {})], verifier
    )
    before = cards_stating(drafted)
    # Without the de-duplication, one blood pressure is in four of the clinician's cards.
    assert len(before["Observation/fifteen-bp-3"]) >= 3
    after_cards = deduplicate(drafted, verifier)
    after = cards_stating(after_cards)
    assert all(len(titles) == 1 for titles in after.values()), after
    # No latest result is lost: each one the results card reported is stated in one card
    # (the earlier readings it compared with give way to the home card's own trend).
    vitals_before = next(s for s in drafted if s.kind == "vitals_labs")
    latest = {stated_results(st)[0] for st in vitals_before.statements}
    assert len(latest) == 11
    assert latest <= set(after)
    # The results' home is the problem's assessment and plan, and the other cards say so.
    assert after["Observation/fifteen-a1c-3"] == [
        "Assessment and plan draft: Type 2 diabetes mellitus with diabetic chronic kidney "
        "disease (rule-based, for review)"
    ]
    vitals = next(s for s in after_cards if s.kind == "vitals_labs")
    assert [st.see for st in vitals.statements] == ["Assessment and plan"]
    assert all(verifier.check(st).ok for s in after_cards for st in s.statements)
    # Patient instructions are for the patient: they keep their numbers.
    instructions = next(s for s in after_cards if s.kind == "patient_instructions")
    assert any("138/82 mmHg" in st.text for st in instructions.statements)


def test_without_an_assessment_and_plan_the_results_card_keeps_the_numbers(tmp_path: Path):
    site = tmp_path / "site.toml"
    site.write_text(
        '[suggestions]\nkinds = ["problem_summary", "vitals_labs", "care_gaps"]\n', encoding="utf-8"
    )
    service = SuggestionService(load_site_config(site))
    _, run = draft_chart(bundle("t2d_htn_ckd"), as_of=AS_OF, service=service)
    vitals = next(s for s in run.suggestions if s.kind == "vitals_labs")
    assert vitals.statements[0].text.startswith("Blood pressure 142/84 mmHg on 2026-11-10")
    summary = next(s for s in run.suggestions if s.kind == "problem_summary")
    assert summary.statements[0].text == (
        "Essential hypertension, onset 2010-02-15 (see Vitals and labs)"
    )
    assert summary.statements[0].see == "Vitals and labs"
    assert all(len(t) == 1 for t in cards_stating(run.suggestions).values())


def test_a_screening_line_whose_result_is_stated_elsewhere_still_says_what_it_is():
    """The care gap keeps its rule's name and verdict, pointing to the result's card; a bare
    "BMI: see …" or "HbA1c: see …" told the clinician neither (obesity_glp1, the sandbox)."""
    chart = bundle("obesity_glp1")
    _, run = draft_chart(chart, as_of=AS_OF)
    [gaps] = [s for s in run.suggestions if s.kind == "care_gaps"]
    texts = [st.text for st in gaps.statements]
    assert (
        "Prediabetes and diabetes screening: due, none on file (see Assessment and plan: Obesity)"
        in texts
    )
    assert not any(t.startswith("BMI:") for t in texts)
    hba1c = {
        "fullUrl": "urn:uuid:Observation-obes-glp1-a1c",
        "resource": {
            "resourceType": "Observation",
            "id": "obes-glp1-a1c",
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "laboratory",
                        }
                    ]
                }
            ],
            "code": {
                "coding": [
                    {
                        "system": "http://loinc.org",
                        "code": "4548-4",
                        "display": "Hemoglobin A1c/Hemoglobin.total in Blood",
                    }
                ]
            },
            "subject": {"reference": "Patient/obes-glp1"},
            "effectiveDateTime": "2026-09-01",
            "valueQuantity": {
                "value": 5.4,
                "unit": "%",
                "system": "http://unitsofmeasure.org",
                "code": "%",
            },
        },
    }
    _, run = draft_chart({**chart, "entry": [*chart["entry"], hba1c]}, as_of=AS_OF)
    [gaps] = [s for s in run.suggestions if s.kind == "care_gaps"]
    texts = [st.text for st in gaps.statements]
    assert any(
        t.startswith("Prediabetes and diabetes screening: up to date (see ") for t in texts
    ), texts
    assert not any(t.startswith("HbA1c:") for t in texts)
