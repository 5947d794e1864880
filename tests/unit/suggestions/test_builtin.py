"""Unit: the built-in rules, kind by kind, on fixture charts: exact statements and citations."""

from __future__ import annotations

import json
from typing import Any

import pytest
from carebundle import generate_bundle, to_json

from smartapp.fhir.parsing import build_snapshot
from smartapp.kinds import KINDS
from smartapp.siteconfig import CareGapRules
from smartapp.suggestions.builtin import BUILTIN_INFO, BuiltinEngine
from smartapp.suggestions.evaluate import bundle_resources
from smartapp.suggestions.grounding import GroundingVerifier
from smartapp.suggestions.interfaces import Suggestion

from .conftest import AS_OF, load_chart

ENGINE = BuiltinEngine()
FIXTURE_CHARTS = [
    "diabetes_hypertension",
    "hypertension_history",
    "ckd_anemia_labs",
    "no_problems",
    "preventive_due",
    "preventive_met",
]


def run(name: str, kind: str, **config: Any) -> list[Suggestion]:
    return ENGINE.suggest(load_chart(name), kind, config)


def pairs(suggestion: Suggestion) -> list[tuple[str, list[str]]]:
    return [(s.text, [c.reference for c in s.citations]) for s in suggestion.statements]


def test_engine_is_labelled_rule_based():
    assert BUILTIN_INFO.name == "builtin-rules"
    assert BUILTIN_INFO.rule_based
    assert "+rules." in BUILTIN_INFO.version
    assert set(ENGINE.kinds()) == set(KINDS)
    for kind in KINDS:
        for suggestion in run("diabetes_hypertension", kind):
            assert "rule-based" in suggestion.title
            assert suggestion.engine == BUILTIN_INFO


def test_problem_summary_lists_active_problems_with_onset_and_latest_result():
    [summary] = run("diabetes_hypertension", "problem_summary")
    assert summary.title == "Problem summary (rule-based)"
    assert pairs(summary) == [
        (
            "Essential (primary) hypertension, onset 2024-01-02; "
            "latest blood pressure 103/66 mmHg on 2026-01-01",
            ["Condition/dm1-hypertension", "Observation/dm1-bp-2026-01"],
        ),
        ("Obesity, unspecified, onset 2024-01-02", ["Condition/dm1-obesity"]),
        (
            "Type 2 diabetes mellitus without complications, onset 2024-01-02; "
            # Older than the HbA1c's six-month window (result_tests.toml): its age is said.
            "latest HbA1c 8.0% on 2026-01-01 (10 months old)",
            ["Condition/dm1-diabetes", "Observation/dm1-hba1c-2026-01"],
        ),
    ]


def test_problem_summary_ckd_and_anaemia_results_skip_inactive_and_erroneous():
    [summary] = run("ckd_anemia_labs", "problem_summary")
    assert pairs(summary) == [
        (
            "Chronic kidney disease stage 3a, onset 2021-05-10; "
            "latest eGFR 44 mL/min/1.73 m2 on 2026-03-10; "
            "latest creatinine 1.31 mg/dL on 2026-03-10",
            [
                "Condition/ckd1-ckd",
                "Observation/ckd1-egfr-2026-03",
                "Observation/ckd1-creatinine-2026-03",
            ],
        ),
        (
            "Anemia in chronic kidney disease, onset 2024-02-01; "
            "latest hemoglobin 10.4 g/dL on 2026-03-10",
            ["Condition/ckd1-anemia", "Observation/ckd1-hemoglobin-2026-03"],
        ),
    ]
    # The entered-in-error eGFR of 99 (newer) is not "latest"; the resolved pneumonia and
    # the entered-in-error diabetes are not problems.
    text = summary.text
    assert "99" not in text and "Pneumonia" not in text and "diabetes" not in text


def test_citation_display_comes_from_the_resource():
    [summary] = run("diabetes_hypertension", "problem_summary")
    displays = {c.reference: c.display for c in summary.citations}
    assert displays["Observation/dm1-hba1c-2026-01"] == "HbA1c 8.0% (2026-01-01)"
    assert displays["Observation/dm1-bp-2026-01"] == "Blood pressure 103/66 mmHg (2026-01-01)"
    assert displays["Condition/dm1-diabetes"] == (
        "Type 2 diabetes mellitus without complications (onset 2024-01-02)"
    )


def test_medications_list_and_reconciliation_hints():
    [meds] = run("diabetes_hypertension", "medications")
    assert meds.title == "Medication list and reconciliation hints (rule-based)"
    # Safety flags (the duplicate pair, the safety table's dual RAS blockade rule) come first.
    assert pairs(meds) == [
        (
            "Duplicate therapy: lisinopril 10 MG Oral Tablet and losartan potassium 50 MG "
            "Oral Tablet are active orders",
            ["MedicationRequest/dm1-lisinopril", "MedicationRequest/dm1-losartan"],
        ),
        ("amlodipine 5 MG Oral Tablet (ordered 2025-12-15)", ["MedicationRequest/dm1-amlodipine"]),
        ("lisinopril 10 MG Oral Tablet (ordered 2025-12-15)", ["MedicationRequest/dm1-lisinopril"]),
        (
            "losartan potassium 50 MG Oral Tablet (ordered 2025-12-15)",
            ["MedicationRequest/dm1-losartan"],
        ),
        (
            "metformin hydrochloride 500 MG Oral Tablet: the order's instructions say "
            '"Take 1 tablet by mouth twice daily with meals" (ordered 2025-12-15)',
            ["MedicationRequest/dm1-metformin"],
        ),
        (
            "omeprazole 20 MG Delayed Release Oral Capsule (ordered 2025-06-15)",
            ["MedicationRequest/dm1-omeprazole"],
        ),
        (
            "No active problem on the list matches omeprazole 20 MG Delayed Release Oral Capsule "
            "(proton pump inhibitor)",
            ["MedicationRequest/dm1-omeprazole"],
        ),
    ]
    assert [s.rule is not None for s in meds.statements] == [True] + [False] * 5 + [True]


def test_medications_resolve_medication_reference_and_contained_and_skip_stopped():
    [meds] = run("ckd_anemia_labs", "medications")
    assert pairs(meds) == [
        (
            "ferrous sulfate 325 MG Oral Tablet: the order's instructions say "
            '"1 tablet by mouth once daily" (ordered 2024-02-15)',
            ["MedicationRequest/ckd1-ferrous", "Medication/ckd1-med-ferrous"],
        ),
        # Contained: citing the order cites the Medication inside it.
        (
            "furosemide 40 MG Oral Tablet (ordered 2025-09-15)",
            ["MedicationRequest/ckd1-furosemide"],
        ),
        # A stopped order is not current: it is shown as stopped, never as taken.
        ("Stopped: ibuprofen 600 MG Oral Tablet", ["MedicationRequest/ckd1-ibuprofen"]),
    ]


def test_problem_with_no_treatment_is_a_hint():
    [meds] = run("hypertension_history", "medications")
    assert pairs(meds) == [
        (
            "No current medication on the list treats Essential (primary) hypertension",
            ["Condition/htn1-hypertension"],
        )
    ]


def test_vitals_labs_trend_direction_and_flags():
    [trend] = run("ckd_anemia_labs", "vitals_labs")
    assert trend.title == "Vitals and labs trend (rule-based)"
    assert pairs(trend) == [
        (
            "Blood pressure 144/92 mmHg on 2026-03-10, previous 150/88 mmHg on 2025-09-15 "
            "(mixed change)",
            [
                "Observation/ckd1-systolic-2026-03",
                "Observation/ckd1-diastolic-2026-03",
                "Observation/ckd1-systolic-2025-09",
                "Observation/ckd1-diastolic-2025-09",
            ],
        ),
        (
            "eGFR 44 mL/min/1.73 m2 on 2026-03-10, previous 47 mL/min/1.73 m2 on 2025-09-15 "
            "(down); flagged low by the lab",
            ["Observation/ckd1-egfr-2026-03", "Observation/ckd1-egfr-2025-09"],
        ),
        (
            "Creatinine 1.31 mg/dL on 2026-03-10; above the reference range 0.57-1.0 mg/dL",
            ["Observation/ckd1-creatinine-2026-03"],
        ),
        (
            "Potassium 5.6 mmol/L on 2026-03-10; flagged high by the lab",
            ["Observation/ckd1-potassium-2026-03"],
        ),
        (
            "Hemoglobin 10.4 g/dL on 2026-03-10, previous 10.9 g/dL on 2025-09-15 (down); "
            "below the reference range 12.0-15.5 g/dL",
            ["Observation/ckd1-hemoglobin-2026-03", "Observation/ckd1-hemoglobin-2025-09"],
        ),
    ]


def test_vitals_labs_bp_panel_trend_and_up_direction():
    [trend] = run("diabetes_hypertension", "vitals_labs")
    texts = [s.text for s in trend.statements]
    assert (
        texts[0]
        == "Blood pressure 103/66 mmHg on 2026-01-01, previous 146/92 mmHg on 2025-10-03 (lower)"
    )
    # No range on the result: the cited default table says it is above the normal range.
    assert (
        "HbA1c 8.0% on 2026-01-01 (10 months old), previous 8.6% on 2025-07-01 (down); "
        "above the default "
        "reference range" in texts
    )
    assert "Weight 96.0 kg on 2026-01-01" in texts


def test_vitals_labs_concise_keeps_key_and_abnormal_detailed_keeps_all():
    concise = run("ckd_anemia_labs", "vitals_labs", detail="concise")[0]
    detailed = run("ckd_anemia_labs", "vitals_labs", detail="detailed")[0]
    # Every numeric result here is a key one or abnormal; systolic and diastolic are
    # reported once, as blood pressure; the urine colour is not a number.
    assert len(concise.statements) == len(detailed.statements) == 5

    # A full carebundle chart: ~30 results; concise keeps the key ones.
    bundle = json.loads(to_json(generate_bundle(profile="ckd_stage3", seed=3, sex="F")))
    resources, _ = bundle_resources(bundle)
    snapshot = build_snapshot(resources, patient_id=resources[0]["id"], fetched_at=AS_OF)
    short = ENGINE.suggest(snapshot, "vitals_labs", {"detail": "concise"})[0].statements
    full = ENGINE.suggest(snapshot, "vitals_labs", {"detail": "detailed"})[0].statements
    assert len(short) < len(full)
    assert {s.text for s in short} <= {s.text for s in full}
    assert any(s.text.startswith("ALT ") for s in full)
    assert not any(s.text.startswith("ALT ") for s in short)

    chart = run("no_problems", "vitals_labs")[0]
    assert [s.text for s in chart.statements] == [
        "Heart rate 68 beats/minute on 2026-05-05",
        "Weight 61.2 kg on 2026-05-05",
    ]


def test_assessment_plan_one_block_per_problem_with_results_treatment_due_and_options():
    drafts = run("diabetes_hypertension", "assessment_plan")
    assert [d.title for d in drafts] == [
        "Assessment and plan draft: Essential (primary) hypertension (rule-based, for review)",
        # Obesity has its results (BMI, weight) now: a problem with results, by onset.
        "Assessment and plan draft: Obesity, unspecified (rule-based, for review)",
        "Assessment and plan draft: Type 2 diabetes mellitus without complications "
        "(rule-based, for review)",
    ]
    drafts = [drafts[0], drafts[2], drafts[1]]
    assert pairs(drafts[1]) == [
        (
            "Type 2 diabetes mellitus without complications",
            ["Condition/dm1-diabetes"],
        ),
        (
            "HbA1c 8.0% on 2026-01-01 (10 months old); above goal",
            ["Observation/dm1-hba1c-2026-01"],
        ),
        # The same day as the HbA1c on the line above: the date is said once.
        ("eGFR 91 mL/min/1.73 m2, same day; not reduced", ["Observation/dm1-egfr"]),
        (
            "On metformin 500 mg (ordered 2025-12-15)",
            ["MedicationRequest/dm1-metformin"],
        ),
        (
            "Consider intensifying glucose-lowering therapy: on metformin alone",
            [
                "Condition/dm1-diabetes",
                "Observation/dm1-hba1c-2026-01",
                "MedicationRequest/dm1-metformin",
            ],
        ),
        (
            "HbA1c due",
            ["Condition/dm1-diabetes", "Observation/dm1-hba1c-2026-01"],
        ),
        (
            "UACR due: none on file",
            ["Condition/dm1-diabetes"],
        ),
        # ADA: a statin for diabetes at 40-75, whatever the LDL; the age is the Patient's.
        (
            "Consider a moderate-intensity statin: age 65; no statin on the medication list",
            ["Condition/dm1-diabetes", "Patient/dm1"],
        ),
    ]
    # Goals and guideline wording are the rule line, never chart-fact text.
    assert drafts[1].statements[1].rule == (
        "ADA Standards of Care in Diabetes 2025: HbA1c goal below 7% for most nonpregnant adults"
    )
    assert drafts[1].statements[4].rule.startswith("ADA Standards of Care in Diabetes 2025:")


def test_assessment_plan_untreated_problem_offers_starting_treatment():
    [draft] = run("hypertension_history", "assessment_plan")
    assert [s.text for s in draft.statements] == [
        # The verdict is the BP line's; the option cites the BP it rests on, not repeats it.
        "Essential (primary) hypertension",
        "BP 140/86 mmHg on 2026-01-01; above goal",
        "No current medication on the list for Essential (primary) hypertension",
        # Ten months old (the line above says when): a reading is due, ACC/AHA 2017.
        "Blood pressure reading due",
        "Consider starting antihypertensive medication (confirm with home or repeat readings)",
    ]  # the lipid panel and flu vaccine gaps belong to no problem: not in this plan


def test_patient_instructions_plain_language_and_cited():
    [instructions] = run("ckd_anemia_labs", "patient_instructions")
    assert instructions.title == "Patient instructions (plain language, rule-based draft)"
    assert pairs(instructions) == [
        (
            "You have kidney disease. Your last kidney blood test (eGFR) was 44 mL/min/1.73 m2 "
            "on 2026-03-10.",
            ["Condition/ckd1-ckd", "Observation/ckd1-egfr-2026-03"],
        ),
        (
            "You have anemia (a low blood count). Your last hemoglobin blood test was 10.4 g/dL "
            "on 2026-03-10.",
            ["Condition/ckd1-anemia", "Observation/ckd1-hemoglobin-2026-03"],
        ),
        (
            "Your medicine list includes ferrous sulfate. Take it the way your care team told you.",
            ["MedicationRequest/ckd1-ferrous", "Medication/ckd1-med-ferrous"],
        ),
        (
            "Your medicine list includes furosemide. Take it the way your care team told you.",
            ["MedicationRequest/ckd1-furosemide"],
        ),
        (
            "You are due for a urine test that checks your kidneys.",
            ["Condition/ckd1-ckd"],
        ),
        (
            "Your blood pressure was 150/88 mmHg on 2025-09-15 and 144/92 mmHg on 2026-03-10. "
            "That is above your goal. Talk with your care team about it.",
            [
                "Observation/ckd1-systolic-2025-09",
                "Observation/ckd1-diastolic-2025-09",
                "Observation/ckd1-systolic-2026-03",
                "Observation/ckd1-diastolic-2026-03",
            ],
        ),
        ("You are due for a cholesterol blood test.", ["Patient/ckd1"]),
        (
            "You are due for a flu shot. It helps protect you from the flu.",
            ["Patient/ckd1"],
        ),
        (
            "You are allergic to penicillin G. Tell every doctor and pharmacist.",
            ["AllergyIntolerance/ckd1-allergy-penicillin"],
        ),
    ]
    # Short sentences: a rough proxy for a 6th-grade reading level.
    for statement in instructions.statements:
        for sentence in statement.text.split(". "):
            assert len(sentence.split()) <= 16, sentence


def test_allergies_with_reaction_criticality_and_no_known_allergy():
    [allergies] = run("ckd_anemia_labs", "allergies")
    assert allergies.title == "Allergies and intolerances (from the chart, rule-based)"
    assert pairs(allergies) == [
        (
            "Penicillin G: allergy, criticality high; reaction: Hives (moderate); "
            "recorded 2019-08-20",
            ["AllergyIntolerance/ckd1-allergy-penicillin"],
        )
    ]  # the refuted codeine allergy is not listed
    [nka] = run("no_problems", "allergies")
    assert pairs(nka) == [
        ("No known allergy (recorded 2025-05-05)", ["AllergyIntolerance/np1-nka"])
    ]


def test_allergies_state_no_known_drug_allergy_only_from_a_record_saying_so():
    [nkda] = run("preventive_met", "allergies")
    assert pairs(nkda) == [
        ("No known drug allergy (recorded 2024-02-02)", ["AllergyIntolerance/pm1-nkda"])
    ]
    # No allergy record of any kind: nothing is said, least of all "no allergies".
    assert run("preventive_due", "allergies") == []
    [instructions] = run("preventive_met", "patient_instructions")
    assert not any("allerg" in s.text.lower() for s in instructions.statements)


@pytest.mark.parametrize("kind", ["problem_summary", "medications", "assessment_plan"])
def test_missing_data_gives_no_suggestion_rather_than_an_empty_one(kind):
    assert run("no_problems", kind) == []
    # No care-gap rule applies, and no allergy record: nothing at all, not "no allergies".
    rules = CareGapRules(
        rules=("hba1c_interval", "kidney_test_interval", "lipid_screening"), packs=()
    )
    assert run("no_problems", "care_gaps", care_gaps=rules) == []
    assert run("no_problems", "patient_instructions", care_gaps=rules) == []
    assert run("hypertension_history", "allergies") == []


def test_medications_kind_is_silent_when_orders_were_not_granted():
    from dataclasses import replace

    snapshot = replace(load_chart("hypertension_history"), not_granted=("MedicationRequest",))
    assert ENGINE.suggest(snapshot, "medications", {}) == []


@pytest.mark.parametrize("name", FIXTURE_CHARTS)
def test_every_builtin_statement_passes_the_grounding_verifier(name):
    snapshot = load_chart(name)
    verifier = GroundingVerifier(snapshot)
    for detail in ("concise", "detailed"):
        for kind in KINDS:
            for suggestion in ENGINE.suggest(snapshot, kind, {"detail": detail}):
                assert suggestion.statements
                for statement in suggestion.statements:
                    result = verifier.check(statement)
                    assert result.ok, (kind, statement.text, result.issues)


def test_unknown_kind_gives_nothing():
    assert run("diabetes_hypertension", "discharge_summary") == []


def _allergy_chart(allergy_code: dict[str, Any], med_code: dict[str, Any]):
    patient = {"resourceType": "Patient", "id": "p", "birthDate": "1960-01-01"}
    order = {
        "resourceType": "MedicationRequest",
        "id": "mr",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p"},
        "authoredOn": "2026-01-02",
        "medicationCodeableConcept": med_code,
    }
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": "al",
        "patient": {"reference": "Patient/p"},
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                    "code": "active",
                }
            ]
        },
        "code": allergy_code,
        "recordedDate": "2020-05-01",
    }
    return build_snapshot([patient, order, allergy], patient_id="p")


RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
ASPIRIN_81 = {
    "coding": [{"system": RX, "code": "243670", "display": "aspirin 81 MG Oral Tablet"}],
    "text": "aspirin 81 MG Oral Tablet",
}


def test_an_active_order_for_a_recorded_allergen_is_flagged_first():
    chart = _allergy_chart(
        {"coding": [{"system": RX, "code": "1191", "display": "aspirin"}], "text": "aspirin"},
        ASPIRIN_81,
    )
    [meds] = ENGINE.suggest(chart, "medications", {})
    first = meds.statements[0]
    assert first.text == (
        "Allergy alert: aspirin 81 MG Oral Tablet is an active order, and an allergy or "
        "intolerance to aspirin is recorded"
    )
    assert [c.reference for c in first.citations] == [
        "MedicationRequest/mr",
        "AllergyIntolerance/al",
    ]
    assert GroundingVerifier(chart).check(first).ok


def test_no_allergy_alert_for_an_unrelated_drug_or_a_no_known_allergy_record():
    penicillin = {
        "coding": [
            {"system": "http://snomed.info/sct", "code": "764146007", "display": "Penicillin"}
        ],
        "text": "penicillin G",
    }
    [meds] = ENGINE.suggest(_allergy_chart(penicillin, ASPIRIN_81), "medications", {})
    assert not [s for s in meds.statements if s.text.startswith("Allergy alert")]
    nka = {
        "coding": [
            {"system": "http://snomed.info/sct", "code": "716186003", "display": "No known allergy"}
        ],
        "text": "No known allergy",
    }
    [meds] = ENGINE.suggest(_allergy_chart(nka, ASPIRIN_81), "medications", {})
    assert not [s for s in meds.statements if s.text.startswith("Allergy alert")]
