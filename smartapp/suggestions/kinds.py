"""The suggestion kinds: their ids (in the site configuration, the API, the metrics) and labels.

The ids are part of the external contract (`GET /api/suggestions` returns them as `kind`,
the site configuration keys its tables by them); the labels start every suggestion's title.
"""

from __future__ import annotations

PROBLEM_SUMMARY = "problem_summary"
MEDICATIONS = "medications"
VITALS_LABS = "vitals_labs"
ASSESSMENT_PLAN = "assessment_plan"
CARE_GAPS = "care_gaps"
PATIENT_INSTRUCTIONS = "patient_instructions"
ALLERGIES = "allergies"

#: Every kind, in the default order the sidebar shows them.
KINDS: tuple[str, ...] = (
    PROBLEM_SUMMARY,
    MEDICATIONS,
    VITALS_LABS,
    ASSESSMENT_PLAN,
    CARE_GAPS,
    PATIENT_INSTRUCTIONS,
    ALLERGIES,
)

#: What each kind is, in the words that start its suggestions' titles.
KIND_LABELS: dict[str, str] = {
    PROBLEM_SUMMARY: "Problem summary",
    MEDICATIONS: "Medication list and reconciliation hints",
    VITALS_LABS: "Vitals and labs trend",
    ASSESSMENT_PLAN: "Assessment and plan draft",
    CARE_GAPS: "Care gaps",
    PATIENT_INSTRUCTIONS: "Patient instructions",
    ALLERGIES: "Allergies and intolerances",
}

#: What each kind asks for, told to an LLM (and shown in `smartapp evaluate --help`).
KIND_DESCRIPTIONS: dict[str, str] = {
    PROBLEM_SUMMARY: (
        "a problem-oriented summary: each active problem with its onset, and the latest "
        "relevant result (HbA1c for diabetes, blood pressure for hypertension, eGFR and "
        "creatinine for chronic kidney disease, haemoglobin for anaemia)"
    ),
    MEDICATIONS: (
        "the current medication list, and reconciliation hints: duplicates within a drug "
        "class, medications with no matching problem, problems with no treatment"
    ),
    VITALS_LABS: (
        "vital signs and laboratory results: the latest value against the previous one, "
        "the direction of change, and abnormal flags from interpretation or reference ranges"
    ),
    ASSESSMENT_PLAN: (
        "an assessment and plan draft for the clinician, one suggestion per active problem: "
        "only facts from the chart, and no recommendation that the chart does not support"
    ),
    CARE_GAPS: (
        "care gaps: overdue monitoring (HbA1c, kidney function) and blood pressure above "
        "target at the most recent readings"
    ),
    PATIENT_INSTRUCTIONS: (
        "instructions for the patient in plain language (about a 6th-grade reading level), "
        "drawn from the problems, medications and care gaps"
    ),
    ALLERGIES: "allergies and intolerances, with reactions, severity and criticality",
}

#: The chart's resource types each kind draws on. A search of one of these that stopped
#: early (or failed) is named on every card of the kind: what it says may be incomplete.
KIND_SOURCES: dict[str, frozenset[str]] = {
    PROBLEM_SUMMARY: frozenset({"Condition", "Observation"}),
    MEDICATIONS: frozenset(
        {"MedicationRequest", "Medication", "AllergyIntolerance", "Condition", "Observation"}
    ),
    VITALS_LABS: frozenset({"Observation"}),
    ASSESSMENT_PLAN: frozenset({"Condition", "Observation", "MedicationRequest", "Medication"}),
    CARE_GAPS: frozenset({"Condition", "Observation", "Procedure", "Immunization"}),
    PATIENT_INSTRUCTIONS: frozenset(
        {"Condition", "Observation", "MedicationRequest", "Medication", "Procedure", "Immunization"}
    ),
    ALLERGIES: frozenset({"AllergyIntolerance"}),
}
