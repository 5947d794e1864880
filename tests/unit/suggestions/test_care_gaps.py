"""Unit: the built-in care-gap rules on fixture charts: what is due, what is up to date,
what does not apply, and what the rules never claim (exact statements and citations)."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest

from smartapp.fhir.parsing import build_snapshot
from smartapp.fhir.snapshot import ChartSnapshot, SnapshotProblem
from smartapp.siteconfig import CARE_GAP_RULES, CareGapRules
from smartapp.suggestions.builtin import BuiltinEngine
from smartapp.suggestions.grounding import GroundingVerifier
from smartapp.suggestions.interfaces import Suggestion

from .conftest import AS_OF, load_chart

ENGINE = BuiltinEngine()

FLU_RULE = "Everyone 6 months and older: an influenza vaccine at least every 12 months"
LIPID_RULE = "Adults 40 to 75: a lipid panel (LDL or total cholesterol) at least every 5 years"
BP_SCREENING_RULE = (
    "Adults 18 and older without hypertension on the problem list: blood pressure at least "
    "every 12 months"
)
BP_RULE = "Blood pressure at or above 140/90 mmHg at the last 2 readings"


def gaps(snapshot: ChartSnapshot, **rules: Any) -> list[tuple[str, list[str]]]:
    """The care-gaps statements as (text, citations); [] when the kind says nothing. The
    preventive packs are off here (tests/unit/suggestions/test_preventive.py has them)."""
    config = {"care_gaps": CareGapRules(**{"packs": (), **rules})}
    found = ENGINE.suggest(snapshot, "care_gaps", config)
    if not found:
        return []
    [suggestion] = found
    assert suggestion.title == "Care gaps (rule-based, site rules)"
    return pairs(suggestion)


def pairs(suggestion: Suggestion) -> list[tuple[str, list[str]]]:
    return [(s.text, [c.reference for c in s.citations]) for s in suggestion.statements]


def rules_of(snapshot: ChartSnapshot) -> list[str | None]:
    [suggestion] = ENGINE.suggest(snapshot, "care_gaps", {"care_gaps": CareGapRules(packs=())})
    return [s.rule for s in suggestion.statements]


def edited(name: str, edit: Any, *, fetched_at: datetime = AS_OF) -> ChartSnapshot:
    """A fixture chart with `edit(resource)` applied to a copy of each resource."""
    snapshot = load_chart(name)
    resources = [copy.deepcopy(r) for r in snapshot.all_resources()]
    for resource in resources:
        edit(resource)
    return build_snapshot(resources, patient_id=snapshot.patient_id, fetched_at=fetched_at)


# -- what is due first, then what is up to date -------------------------------------------


def test_due_items_come_first_then_what_is_up_to_date():
    assert gaps(load_chart("diabetes_hypertension")) == [
        (
            "Diabetes: consider an HbA1c — the latest, 8.0% on 2026-01-01, is older than the "
            "site's interval",
            ["Observation/dm1-hba1c-2026-01", "Condition/dm1-diabetes"],
        ),
        (
            "Diabetes: consider a urine albumin/creatinine ratio (UACR) — none is on file",
            ["Condition/dm1-diabetes"],
        ),
        ("Influenza vaccine: consider a flu vaccine — none is on file", ["Patient/dm1"]),
        (
            "Diabetes: kidney function test up to date — eGFR 91 mL/min/1.73 m2 on 2026-01-01",
            ["Observation/dm1-egfr", "Condition/dm1-diabetes"],
        ),
        (
            "Cholesterol: lipid panel done within the interval; "
            "above the default reference range "
            "— LDL cholesterol 121 mg/dL on 2026-01-01",
            ["Observation/dm1-ldl"],
        ),
    ]


def test_every_rule_met_is_reported_with_what_shows_it():
    snapshot = load_chart("preventive_met")
    assert gaps(snapshot) == [
        (
            "Diabetes: HbA1c done within the interval; above goal — 7.1% on 2026-09-27",
            ["Observation/pm1-hba1c-2026-09", "Condition/pm1-diabetes"],
        ),
        (
            # In the goal's own words, as the assessment and plan says them.
            "Diabetes: kidney function test done within the interval; reduced "
            "— eGFR 58 mL/min/1.73 m2 on 2026-09-27",
            ["Observation/pm1-egfr-2026-09", "Condition/pm1-diabetes"],
        ),
        (
            "Diabetes: UACR done within the interval; albuminuria — 42 mg/g on 2026-09-27",
            ["Observation/pm1-uacr-2026-09", "Condition/pm1-diabetes"],
        ),
        # LDL and total cholesterol drawn the same day: the LDL is the one shown.
        (
            "Cholesterol: lipid panel up to date — LDL cholesterol 96 mg/dL on 2025-03-14",
            ["Observation/pm1-ldl-2025-03"],
        ),
        (
            "Influenza vaccine: up to date — Influenza, injectable, quadrivalent, preservative "
            "free given on 2026-10-05",
            ["Immunization/pm1-flu-2026"],
        ),
    ]
    # The site's intervals are named in the rule, never stated as chart facts (and the
    # goal or default reference range a result was judged by, with its source, after them).
    rules = rules_of(snapshot)
    assert rules[0].endswith(
        "; ADA Standards of Care in Diabetes 2025: HbA1c goal below 7% for most nonpregnant adults"
    )
    assert [r.split("; ")[0] for r in rules] == [
        "Diabetes: HbA1c at least every 6 months",
        "Diabetes or chronic kidney disease: eGFR or creatinine at least every 12 months",
        "Diabetes or chronic kidney disease: urine albumin/creatinine ratio at least every "
        "12 months",
        LIPID_RULE,
        FLU_RULE,
    ]
    # Nothing is due: no plan item and no patient instruction comes from the rules.
    instructions = ENGINE.suggest(snapshot, "patient_instructions", {})[0]
    assert not any(s.rule for s in instructions.statements)
    assert not any(
        s.text.startswith("Plan (care-gap rule)")
        for d in ENGINE.suggest(snapshot, "assessment_plan", {})
        for s in d.statements
    )


def test_preventive_rules_due_cite_the_latest_and_ignore_doses_not_given():
    snapshot = load_chart("preventive_due")
    assert gaps(snapshot) == [
        (
            "Blood pressure screening: consider a blood pressure reading — the latest, "
            "128/82 mmHg on 2025-06-10, is older than the site's interval",
            ["Observation/pv1-bp-2025-06"],
        ),
        (
            "Cholesterol: consider a lipid panel — the latest, total cholesterol 212 mg/dL on "
            "2019-05-20, is older than the site's interval",
            ["Observation/pv1-cholesterol-2019-05"],
        ),
        # The declined and the entered-in-error 2026 doses and the Hib vaccine do not count.
        (
            "Influenza vaccine: consider a flu vaccine — the latest, given on 2024-10-15, is "
            "older than the site's interval",
            ["Immunization/pv1-flu-2024"],
        ),
    ]
    assert rules_of(snapshot) == [BP_SCREENING_RULE, LIPID_RULE, FLU_RULE]
    [instructions] = ENGINE.suggest(snapshot, "patient_instructions", {})
    assert pairs(instructions) == [
        ("You are due for a blood pressure check.", ["Observation/pv1-bp-2025-06"]),
        ("You are due for a cholesterol blood test.", ["Observation/pv1-cholesterol-2019-05"]),
        (
            "You are due for a flu shot. It helps protect you from the flu.",
            ["Immunization/pv1-flu-2024"],
        ),
    ]


def test_intervals_come_from_the_site():
    snapshot = load_chart("preventive_due")
    longer = gaps(
        snapshot,
        bp_screening_interval_months=18,
        lipid_interval_months=120,
        influenza_interval_months=24,
    )
    assert longer == [
        # 2024-10-15 is more than 24 months before 2026-11-23: still due, so listed first.
        (
            "Influenza vaccine: consider a flu vaccine — the latest, given on 2024-10-15, is "
            "older than the site's interval",
            ["Immunization/pv1-flu-2024"],
        ),
        (
            "Blood pressure screening: up to date — 128/82 mmHg on 2025-06-10",
            ["Observation/pv1-bp-2025-06"],
        ),
        (
            "Cholesterol: lipid panel up to date — total cholesterol 212 mg/dL on 2019-05-20",
            ["Observation/pv1-cholesterol-2019-05"],
        ),
    ]
    earlier = load_chart("preventive_due", fetched_at=AS_OF.replace(year=2026, month=9))
    assert gaps(earlier, rules=("influenza_vaccine",), influenza_interval_months=24) == [
        (
            "Influenza vaccine: up to date — Influenza, seasonal, injectable given on 2024-10-15",
            ["Immunization/pv1-flu-2024"],
        )
    ]
    [suggestion] = ENGINE.suggest(
        snapshot, "care_gaps", {"care_gaps": CareGapRules(lipid_interval_months=120)}
    )
    assert (
        "Adults 40 to 75: a lipid panel (LDL or total cholesterol) at least every 10 years"
    ) in [s.rule for s in suggestion.statements]


# -- rules that do not apply say nothing ------------------------------------------------


def test_age_limits_decide_which_preventive_rules_apply():
    met = load_chart("preventive_met")  # born 1971-02-02: 55 on 2026-11-23
    texts = [text for text, _ in gaps(met, lipid_min_age=56)]
    assert not any(t.startswith("Cholesterol") for t in texts)
    texts = [text for text, _ in gaps(met, lipid_max_age=54)]
    assert not any(t.startswith("Cholesterol") for t in texts)
    assert any(t.startswith("Cholesterol") for t, _ in gaps(met, lipid_min_age=55))
    # 36 years old: no lipid rule by default; blood pressure screening from 18 (or as set).
    young = load_chart("no_problems")
    assert [t for t, _ in gaps(young)] == [
        "Blood pressure screening: consider a blood pressure reading — none is on file",
        "Influenza vaccine: consider a flu vaccine — none is on file",
    ]
    assert [t for t, _ in gaps(young, bp_screening_min_age=40)] == [
        "Influenza vaccine: consider a flu vaccine — none is on file"
    ]


def test_influenza_vaccine_applies_from_six_months_of_age():
    def born(day: str) -> Any:
        def edit(resource: dict[str, Any]) -> None:
            if resource["resourceType"] == "Patient":
                resource["birthDate"] = day

        return edit

    too_young = edited("no_problems", born("2026-06-01"))  # under 6 months on 2026-11-23
    assert not any(t.startswith("Influenza") for t, _ in gaps(too_young))
    old_enough = edited("no_problems", born("2026-05-23"))
    assert any(t.startswith("Influenza") for t, _ in gaps(old_enough))


def test_disease_rules_need_the_disease_and_screening_is_not_for_hypertension():
    due = [t for t, _ in gaps(load_chart("preventive_due"))]  # no diabetes, no CKD
    assert not any(t.startswith(("Diabetes", "Chronic kidney disease")) for t in due)
    met = [t for t, _ in gaps(load_chart("preventive_met"))]  # hypertension on the list
    assert not any(t.startswith("Blood pressure screening") for t in met)


def test_a_patient_without_a_birth_date_gets_no_age_based_rule():
    def no_birth_date(resource: dict[str, Any]) -> None:
        if resource["resourceType"] == "Patient":
            del resource["birthDate"]

    assert gaps(edited("preventive_due", no_birth_date)) == []


def test_a_deceased_patient_gets_no_care_gaps():
    def deceased(resource: dict[str, Any]) -> None:
        if resource["resourceType"] == "Patient":
            resource["deceasedDateTime"] = "2026-11-01"

    assert gaps(edited("preventive_met", deceased)) == []
    assert gaps(edited("diabetes_hypertension", deceased)) == []


def test_rules_left_out_by_the_site_say_nothing():
    snapshot = load_chart("preventive_met")
    assert [t for t, _ in gaps(snapshot, rules=("influenza_vaccine",))] == [
        "Influenza vaccine: up to date — Influenza, injectable, quadrivalent, preservative free "
        "given on 2026-10-05"
    ]
    assert gaps(snapshot, rules=()) == []


# -- never "missing" when the app could not read everything ------------------------------


def test_nothing_is_called_missing_when_the_scope_was_not_granted():
    snapshot = replace(load_chart("preventive_due"), not_granted=("Immunization",))
    assert [t for t, _ in gaps(snapshot)] == [
        "Blood pressure screening: consider a blood pressure reading — the latest, 128/82 mmHg "
        "on 2025-06-10, is older than the site's interval",
        "Cholesterol: consider a lipid panel — the latest, total cholesterol 212 mg/dL on "
        "2019-05-20, is older than the site's interval",
    ]


@pytest.mark.parametrize("code", ["truncated", "search_failed"])
def test_an_incomplete_search_allows_up_to_date_but_not_due(code):
    problem = SnapshotProblem(code=code, resource_type="Observation", detail="test")
    due = replace(load_chart("preventive_due"), problems=(problem,))
    assert [t for t, _ in gaps(due)] == [
        "Influenza vaccine: consider a flu vaccine — the latest, given on 2024-10-15, is older "
        "than the site's interval"
    ]
    met = replace(load_chart("preventive_met"), problems=(problem,))
    # What is up to date stays; blood pressure control is not judged from readings that
    # may not be the last ones (tests/unit/suggestions/test_incomplete_reads.py).
    assert gaps(met) == [
        g
        for g in gaps(load_chart("preventive_met"))
        if not g[0].startswith("Hypertension: latest blood pressure")
    ]


# -- blood pressure ------------------------------------------------------------------------


def test_bp_above_threshold_at_the_last_two_readings_with_hypertension():
    snapshot = load_chart("hypertension_history")
    assert gaps(snapshot) == [
        (
            # Nothing on the medication list treats it: not "reviewing" a treatment.
            "Hypertension: consider starting treatment (none on the medication list) — blood "
            "pressure 140/86 mmHg on 2025-10-03 and 140/86 mmHg on 2026-01-01: the last two "
            "readings are at or above the site's threshold",
            ["Observation/htn1-bp-2025-10", "Observation/htn1-bp-2026-01"],
        ),
        # Born 1975 and no cholesterol result: the Patient is what the rule rests on.
        (
            "Cholesterol: consider a lipid panel — no cholesterol result is on file",
            ["Patient/htn1"],
        ),
        ("Influenza vaccine: consider a flu vaccine — none is on file", ["Patient/htn1"]),
    ]
    assert rules_of(snapshot)[0] == BP_RULE


def test_bp_above_threshold_on_an_antihypertensive_suggests_reviewing_it():
    chart = load_chart("hypertension_history")
    lisinopril = {
        "resourceType": "MedicationRequest",
        "id": "htn1-lisinopril",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/htn1"},
        "authoredOn": "2024-02-01",
        "medicationCodeableConcept": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "314076",
                    "display": "lisinopril 10 MG Oral Tablet",
                }
            ]
        },
    }
    treated = build_snapshot(
        [*chart.all_resources(), lisinopril], patient_id="htn1", fetched_at=AS_OF
    )
    assert gaps(treated)[0][0].startswith("Hypertension: consider reviewing treatment — ")


def test_bp_above_threshold_without_hypertension_suggests_evaluation_not_screening():
    texts = [t for t, _ in gaps(load_chart("ckd_anemia_labs"))]
    assert (
        "Blood pressure: consider evaluating for hypertension — blood pressure 150/88 mmHg on "
        "2025-09-15 and 144/92 mmHg on 2026-03-10: the last two readings are at or above the "
        "site's threshold"
    ) in texts
    # Screening "up to date" would be noise next to readings above the threshold.
    assert not any(t.startswith("Blood pressure screening") for t in texts)


def test_bp_latest_above_but_an_earlier_reading_below():
    def swap_dates(resource: dict[str, Any]) -> None:
        dates = {
            "pm1-bp-2026-06": "2026-09-27T08:30:00Z",
            "pm1-bp-2026-09": "2026-06-20T09:10:00Z",
        }
        if resource.get("id") in dates:
            resource["effectiveDateTime"] = dates[resource["id"]]

    snapshot = edited("preventive_met", swap_dates)
    # Control against the patient's goal is the assessment and plan's to state.
    assert not any("blood pressure" in text.lower() for text, _ in gaps(snapshot))
    # Not the site's gap (that needs every one of the last readings): not a plan item.
    assert not any(
        s.text.startswith("Plan (care-gap rule)")
        for d in ENGINE.suggest(snapshot, "assessment_plan", {})
        for s in d.statements
    )


def test_bp_thresholds_come_from_the_site():
    snapshot = load_chart("hypertension_history")
    only_bp = ("bp_above_threshold",)
    # 140/86 is below a 141/90 threshold: not a gap, and no "below the threshold" line
    # beside an assessment that judges it against the patient's goal.
    assert gaps(snapshot, rules=only_bp, bp_systolic=141, bp_diastolic=90) == []
    [(text, _)] = gaps(snapshot, rules=only_bp, bp_readings=3)
    assert text.endswith("the last three readings are at or above the site's threshold")


# -- monitoring of diabetes and kidney disease ------------------------------------------------


def test_no_hba1c_on_file_cites_the_problem():
    def drop_hba1c(resource: dict[str, Any]) -> None:
        if "hba1c" in str(resource.get("id")):
            resource["status"] = "entered-in-error"

    snapshot = edited("diabetes_hypertension", drop_hba1c)
    assert gaps(snapshot, rules=("hba1c_interval",)) == [
        ("Diabetes: consider an HbA1c — none is on file", ["Condition/dm1-diabetes"])
    ]
    assert gaps(
        load_chart("diabetes_hypertension"),
        rules=("hba1c_interval",),
        **{"hba1c_interval_months": 12},
    ) == [
        (
            "Diabetes: HbA1c done within the interval; above goal — 8.0% on 2026-01-01",
            ["Observation/dm1-hba1c-2026-01", "Condition/dm1-diabetes"],
        )
    ]


def test_kidney_tests_count_from_the_as_of_day():
    later = load_chart("ckd_anemia_labs", fetched_at=AS_OF.replace(year=2027, month=6))
    assert gaps(later, rules=("kidney_test_interval", "urine_albumin_interval")) == [
        (
            "Chronic kidney disease: consider a kidney function test — the latest, eGFR 44 "
            "mL/min/1.73 m2 on 2026-03-10, is older than the site's interval",
            ["Observation/ckd1-egfr-2026-03", "Condition/ckd1-ckd"],
        ),
        (
            "Chronic kidney disease: consider a urine albumin/creatinine ratio (UACR) "
            "— none is on file",
            ["Condition/ckd1-ckd"],
        ),
    ]


# -- every statement is grounded ---------------------------------------------------------------


@pytest.mark.parametrize(
    "rules",
    [
        CareGapRules(),
        CareGapRules(influenza_interval_months=24, lipid_interval_months=120, bp_readings=1),
    ],
)
@pytest.mark.parametrize(
    "name",
    ["preventive_due", "preventive_met", "diabetes_hypertension", "hypertension_history"],
)
def test_every_care_gap_statement_passes_the_grounding_verifier(name, rules):
    snapshot = load_chart(name)
    verifier = GroundingVerifier(snapshot)
    for kind in ("care_gaps", "assessment_plan", "patient_instructions"):
        for suggestion in ENGINE.suggest(snapshot, kind, {"care_gaps": rules}):
            for statement in suggestion.statements:
                result = verifier.check(statement)
                assert result.ok, (statement.text, result.issues)


def test_default_rules_are_every_rule():
    assert CareGapRules().rules == CARE_GAP_RULES


def test_an_undated_result_is_neither_up_to_date_nor_overdue():
    def undated(resource: dict[str, Any]) -> None:
        if resource.get("id") == "pv1-cholesterol-2019-05":
            del resource["effectiveDateTime"]

    texts = [t for t, _ in gaps(edited("preventive_due", undated))]
    assert not any(t.startswith("Cholesterol") for t in texts)
    assert len(texts) == 2  # blood pressure and influenza vaccine still speak
