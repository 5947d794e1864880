"""The suggestion kinds: their ids (in the site configuration, the API, the metrics) and labels.

The ids are part of the external contract (`GET /api/suggestions` returns them as `kind`,
the site configuration keys its tables by them); the labels start every suggestion's title.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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

#: The key of the engine options (`EffectiveConfig.engine_options`) holding the kinds shown
#: to this clinician on this request: what a kind rolled out to 0 %, switched off or left
#: out of the site file would say appears in no other kind's draft either.
ENABLED_KINDS = "enabled_kinds"


def enabled_kinds(options: Mapping[str, Any]) -> frozenset[str]:
    """The kinds shown on this request, from an engine's options (every kind when unsaid)."""
    enabled = options.get(ENABLED_KINDS)
    return frozenset(KINDS) if enabled is None else frozenset(enabled)


#: The engines a site can choose per kind (`[suggestions] engine`, `[kinds.<kind>] engine`),
#: and the names each goes by in the engine registry and the kill switches.
ENGINE_NAMES: dict[str, tuple[str, ...]] = {
    "builtin": ("builtin", "builtin-rules"),
    "llm": ("llm",),
}
ENGINES: tuple[str, ...] = tuple(ENGINE_NAMES)


def unknown_kind(name: str, *, wildcard: str | None = None) -> str | None:
    """None when `name` is a kind (or the `wildcard`), else the choices to tell the writer.

    Every place that stores a kind name (the site file, rollout rules, kill switches,
    engine versions) checks it against KINDS: a typo ("care-gaps") would otherwise be a
    rule that silently applies to nothing.
    """
    if name in KINDS or (wildcard is not None and name == wildcard):
        return None
    return "one of " + ", ".join(KINDS) + (f", or {wildcard} for every kind" if wildcard else "")


def unknown_engine(name: str) -> str | None:
    """None when `name` is what an engine goes by (a kill switch's target), else the choices."""
    names = tuple(n for group in ENGINE_NAMES.values() for n in group)
    return None if name in names else "one of " + ", ".join(names)
