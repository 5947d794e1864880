"""Unit: the note composer — sections a clinician writes, no engine labels, unverified
statements never written as fact, patient instructions kept for the after-visit summary."""

from __future__ import annotations

import json
import re
import tomllib
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from smartapp.note_layout import NoteLayout, NoteSection
from smartapp.notes.composer import Decided, as_written, compose
from smartapp.notes.readability import grade_level
from smartapp.siteconfig import parse_site_config
from smartapp.suggestions.charts import draft_chart
from smartapp.suggestions.registry import SuggestionService

CLINICAL = Path(__file__).resolve().parents[2] / "fixtures" / "clinical"
CHARTS = sorted(p for p in CLINICAL.glob("*.json"))
RULES = ("builtin-rules", "0.1.0+rules.4")
LLM = ("llm", "qwen2.5@2024-09-19")

#: What must never reach a clinician's note: engine labels and the sidebar's markers.
LABELS = re.compile(
    r"rule-based|for review|AI-generated|\[unverified\]|builtin|\(sources: |Rules applied",
    re.IGNORECASE,
)
#: Sentences addressed to the patient.
PATIENT_FACING = re.compile(r"(^|[-.] )(You|Your)\b", re.MULTILINE)


def statement(text: str, *refs: str, verified: bool | None = True) -> dict[str, Any]:
    return {
        "text": text,
        "citations": [{"reference": r, "display": r} for r in refs],
        "verified": verified,
        "issues": [] if verified is not False else ["a number is not in the cited resources"],
    }


def decided(
    kind: str,
    title: str,
    *statements: dict[str, Any],
    action: str = "accept",
    final_text: str | None = None,
    engine: tuple[str, str] = RULES,
    sid: str | None = None,
) -> Decided:
    text = "\n".join(
        ("- [unverified] " if s["verified"] is False else "- ") + s["text"] for s in statements
    )
    return Decided(
        id=sid or f"{kind}-{abs(hash(title)) % 1000}",
        kind=kind,
        title=title,
        text=text,
        statements=statements,
        engine=engine,
        action=action,
        final_text=final_text,
    )


SUMMARY = decided(
    "problem_summary",
    "Problem summary (rule-based)",
    statement("Diabetes mellitus type 2, onset 2008-01-01", "Condition/dm"),
    statement("HbA1c 8.1 % on 2026-10-01", "Observation/a1c"),
)
VITALS = decided(
    "vitals_labs",
    "Vitals and labs trend (rule-based)",
    statement("Blood pressure 152/94 mmHg on 2026-11-01", "Observation/bp"),
    statement("HbA1c 8.1 % on 2026-10-01", "Observation/a1c"),
)
PLAN = decided(
    "assessment_plan",
    "Assessment and plan draft: Diabetes mellitus type 2 (rule-based, for review)",
    statement("Diabetes mellitus type 2, since 2008-01-01: above goal", "Condition/dm"),
    statement("On metformin 500 MG Oral Tablet", "MedicationRequest/met"),
    statement("Consider adding a second agent: HbA1c 8.1 % on 2026-10-01", "Observation/a1c"),
    statement("Urine albumin/creatinine ratio due: none on file", "Condition/dm"),
)
MEDS = decided(
    "medications",
    "Medication list and reconciliation hints (rule-based)",
    statement("metformin 500 MG Oral Tablet (ordered 2024-05-10)", "MedicationRequest/met"),
)
GAPS = decided(
    "care_gaps",
    "Care gaps (rule-based, site rules)",
    statement("Influenza vaccine: consider a flu vaccine — none is on file", "Patient/p"),
)
ALLERGIES = decided(
    "allergies",
    "Allergies and intolerances (from the chart, rule-based)",
    statement("Penicillin: allergy; reaction: hives", "AllergyIntolerance/pcn"),
)
INSTRUCTIONS = decided(
    "patient_instructions",
    "Patient instructions (plain language, rule-based draft)",
    statement("You have diabetes.", "Condition/dm"),
    statement("You are due for a flu shot. It helps protect you from the flu.", "Patient/p"),
)


def section(text: str, heading: str) -> str:
    """The body of one section of a composed note."""
    blocks = {b.split("\n", 1)[0]: b.split("\n", 1)[1] for b in text.split("\n\n")}
    return blocks[heading]


def test_default_note_is_soap_with_each_part_in_its_section():
    note = compose([SUMMARY, VITALS, PLAN, MEDS, GAPS, ALLERGIES]).text
    headings = [block.split("\n", 1)[0] for block in note.split("\n\n")]
    assert headings == ["Subjective", "Objective", "Assessment", "Plan"]
    assert section(note, "Subjective") == (
        "- Diabetes mellitus type 2, onset 2008-01-01\n"
        "Allergies:\n- Penicillin: allergy; reaction: hives"
    )
    # The summary's result line joins the trends; the same result is written once.
    assert section(note, "Objective") == (
        "- HbA1c 8.1 % on 2026-10-01\n- Blood pressure 152/94 mmHg on 2026-11-01"
    )
    assert section(note, "Assessment") == (
        "Diabetes mellitus type 2:\n"
        "- Diabetes mellitus type 2, since 2008-01-01: above goal\n"
        "- On metformin 500 MG Oral Tablet"
    )
    assert section(note, "Plan") == (
        "Diabetes mellitus type 2:\n"
        "- Consider adding a second agent: HbA1c 8.1 % on 2026-10-01\n"
        "- Urine albumin/creatinine ratio due: none on file\n"
        "Medication reconciliation:\n- metformin 500 MG Oral Tablet (ordered 2024-05-10)\n"
        "Health maintenance:\n- Influenza vaccine: consider a flu vaccine — none is on file"
    )


def test_no_engine_labels_or_patient_sentences_in_the_note():
    composed = compose([SUMMARY, VITALS, PLAN, MEDS, GAPS, ALLERGIES, INSTRUCTIONS])
    assert not LABELS.search(composed.text)
    assert not PATIENT_FACING.search(composed.text)
    assert "You have diabetes." not in composed.text
    # The instructions are the after-visit summary's text instead.
    assert composed.patient.text == (
        "- You have diabetes.\n- You are due for a flu shot. It helps protect you from the flu."
    )
    assert INSTRUCTIONS.id not in composed.note.used
    assert composed.patient.used == (INSTRUCTIONS.id,)


def test_accepted_unverified_statement_is_left_out_and_reported():
    card = decided(
        "vitals_labs",
        "Vitals and labs trend (AI-generated draft, qwen2.5)",
        statement("Blood pressure 152/94 mmHg on 2026-11-01", "Observation/bp"),
        statement("Potassium 6.9 mmol/L on 2026-11-02", "Observation/k", verified=False),
        engine=LLM,
    )
    composed = compose([card])
    assert composed.text == "Objective\n- Blood pressure 152/94 mmHg on 2026-11-01"
    [omitted] = composed.omitted
    assert omitted.text == "Potassium 6.9 mmol/L on 2026-11-02"
    assert "not verified" in omitted.reason


def test_edit_keeps_a_line_the_clinician_unmarked_and_drops_one_still_marked():
    card = decided(
        "vitals_labs",
        "Vitals and labs trend (rule-based)",
        statement("Blood pressure 152/94 mmHg on 2026-11-01", "Observation/bp"),
        statement("Potassium 6.9 mmol/L on 2026-11-02", "Observation/k", verified=False),
        statement("Sodium 128 mmol/L on 2026-11-02", "Observation/na", verified=False),
        action="edit",
        final_text=(
            "- Blood pressure 152/94 mmHg on 2026-11-01, repeated 148/90 in clinic\n"
            "- Potassium 6.9 mmol/L on 2026-11-02 (haemolysed; repeat sent)\n"
            "- [unverified] Sodium 128 mmol/L on 2026-11-02\n"
        ),
    )
    composed = compose([card])
    # The clinician removed the marker from the potassium line: it is their text now.
    assert composed.text == (
        "Objective\n"
        "- Blood pressure 152/94 mmHg on 2026-11-01, repeated 148/90 in clinic\n"
        "- Potassium 6.9 mmol/L on 2026-11-02 (haemolysed; repeat sent)"
    )
    assert [o.text for o in composed.omitted] == ["Sodium 128 mmol/L on 2026-11-02"]


def test_prose_edit_drops_only_the_marked_sentence():
    card = decided(
        "problem_summary",
        "Problem summary (rule-based)",
        statement("Hypertension, onset 2015-03-01", "Condition/htn"),
        statement("Asthma, onset 2001-01-01", "Condition/asthma", verified=False),
        action="edit",
        final_text=(
            "Hypertension, onset 2015-03-01. [unverified] Asthma, onset 2001-01-01. Lives alone."
        ),
    )
    composed = compose([card])
    assert composed.text == "Subjective\nHypertension, onset 2015-03-01. Lives alone."
    assert [o.text for o in composed.omitted] == ["Asthma, onset 2001-01-01"]


def test_edited_block_routes_its_lines_and_drops_template_decorations():
    edited = (
        "- Diabetes mellitus type 2, since 2008-01-01: above goal\n"
        "  (sources: Diabetes mellitus type 2 (Condition))\n"
        "- Tolerating metformin well\n"
        "- Consider adding a second agent: HbA1c 8.1 % on 2026-10-01\n"
        "- Discussed diet and exercise\n"
        "\n"
        "Rules applied: ADA 2025: HbA1c goal below 7 %.\n"
    )
    card = decided(
        "assessment_plan",
        PLAN.title,
        *PLAN.statements,
        action="edit",
        final_text=edited,
    )
    note = compose([card]).text
    assert section(note, "Assessment") == (
        "Diabetes mellitus type 2:\n"
        "- Diabetes mellitus type 2, since 2008-01-01: above goal\n"
        "- Tolerating metformin well"
    )
    # A line of the clinician's own follows the plan line before it.
    assert section(note, "Plan") == (
        "Diabetes mellitus type 2:\n"
        "- Consider adding a second agent: HbA1c 8.1 % on 2026-10-01\n"
        "- Discussed diet and exercise"
    )
    assert not LABELS.search(note)


def test_site_layout_names_the_sections_and_labels():
    layout = NoteLayout(
        sections=(
            NoteSection(heading="History", parts=("problems", "allergies", "medications")),
            NoteSection(heading="Findings", parts=("results",)),
            NoteSection(heading="Assessment and plan", parts=("assessment", "plan")),
            NoteSection(heading="Prevention", parts=("health_maintenance",)),
        ),
        labels={"medications": "Medications", "health_maintenance": ""},
    )
    note = compose([SUMMARY, MEDS, PLAN, GAPS], layout).text
    assert [b.split("\n", 1)[0] for b in note.split("\n\n")] == [
        "History",
        "Findings",
        "Assessment and plan",
        "Prevention",
    ]
    assert "Medications:\n- metformin 500 MG Oral Tablet" in section(note, "History")
    assert section(note, "Prevention") == (
        "- Influenza vaccine: consider a flu vaccine — none is on file"
    )
    # Assessment and plan of one problem under one heading, assessment lines first.
    ap = section(note, "Assessment and plan")
    assert ap.index("above goal") < ap.index("Consider adding")


def test_ai_label_only_when_the_note_holds_drafted_text():
    composed = compose([SUMMARY, PLAN])
    assert composed.note.ai_assisted
    assert composed.note.engines == (RULES,)
    # The clinician's own text, written in full, holds no drafted line: not AI-assisted.
    own = as_written("Seen today. Doing well. Continue current plan.", composed.note)
    assert not own.ai_assisted and own.engines == () and own.used == ()
    # Keeping one drafted line in a rewritten note keeps that engine's label.
    kept = as_written(
        "Seen today.\n- Diabetes mellitus type 2, onset 2008-01-01", compose([SUMMARY]).note
    )
    assert kept.ai_assisted and kept.used == (SUMMARY.id,)
    # Only the engines whose lines are in the note label it.
    llm_gaps = decided("care_gaps", "Care gaps", *GAPS.statements, engine=LLM, sid="gaps-llm")
    both = compose([SUMMARY, llm_gaps]).note
    assert both.engines == (RULES, LLM)
    assert compose([INSTRUCTIONS]).note.engines == ()  # only patient text: not in the note


def test_card_cross_references_become_references_within_the_note():
    pointer = statement("INR: see Assessment and plan: Atrial fibrillation", "Observation/inr")
    pointer["see"] = "Assessment and plan: Atrial fibrillation"
    brief = statement("Atrial fibrillation, onset 2019-09-09 (see Assessment and plan)", "C/af")
    brief["see"] = "Assessment and plan"
    vitals = decided("vitals_labs", "Vitals and labs trend (rule-based)", pointer)
    summary = decided("problem_summary", "Problem summary (rule-based)", brief)
    block = decided(
        "assessment_plan",
        "Assessment and plan draft: Atrial fibrillation (rule-based, for review)",
        statement("INR 1.6 on 2026-11-16; below the therapeutic range", "Observation/inr"),
    )
    note = compose([summary, vitals, block]).text
    assert section(note, "Objective") == "- INR: see Assessment (Atrial fibrillation)"
    assert section(note, "Subjective") == "- Atrial fibrillation, onset 2019-09-09 (see Assessment)"
    # Without the block in the note, a pointer points at nothing: it goes.
    alone = compose([summary, vitals]).text
    assert alone == "Subjective\n- Atrial fibrillation, onset 2019-09-09"


def test_nothing_accepted_composes_an_empty_note():
    rejected = decided("problem_summary", "Problem summary", *SUMMARY.statements, action="reject")
    composed = compose([rejected])
    assert composed.text == "" and composed.sections == () and not composed.note.ai_assisted


# -- fixture charts through the shipped engine ------------------------------------------


def _as_of(chart: Path) -> date | None:
    for suffix in (".reference.toml", ".expect.toml"):
        meta = chart.with_name(chart.stem + suffix)
        if meta.exists():
            return date.fromisoformat(str(tomllib.loads(meta.read_text())["as_of"]))
    return None


def _all_accepted(chart: Path, service: SuggestionService | None = None) -> list[Decided]:
    bundle = json.loads(chart.read_text(encoding="utf-8"))
    _snapshot, run = draft_chart(bundle, as_of=_as_of(chart), service=service)
    return [
        Decided(
            id=f"s{i}",
            kind=s.kind,
            title=s.title,
            text=s.text,
            statements=[st.to_json() for st in s.statements],
            engine=(s.engine.name, s.engine.version),
            action="accept",
        )
        for i, s in enumerate(run.suggestions)
    ]


@pytest.mark.parametrize("chart", CHARTS, ids=lambda p: p.stem)
def test_fixture_chart_note_is_a_clinical_note(chart: Path):
    items = _all_accepted(chart)
    composed = compose(items)
    assert not LABELS.search(composed.text), chart.stem
    assert not PATIENT_FACING.search(composed.text), chart.stem
    headings = [s.heading for s in composed.sections]
    assert headings == [
        h for h in ("Subjective", "Objective", "Assessment", "Plan") if h in headings
    ]
    # Every verified statement of the clinician's kinds is in the note, exactly once.
    for item in items:
        if item.kind == "patient_instructions":
            continue
        for st in item.statements:
            if st.get("see"):
                continue  # a cross-reference: rewritten to the note's sections
            assert (
                composed.text.count(f"- {st['text']}\n") + composed.text.endswith(f"- {st['text']}")
                == 1
            ), st["text"]
    assert "see Assessment and plan" not in composed.text  # card names, not the note's
    # The patient's instructions read at the default after-visit summary level (grade 6).
    assert grade_level(composed.patient.text) <= 6, composed.patient.text


def test_a_lower_site_reading_grade_makes_plainer_instructions():
    site = parse_site_config("[after_visit_summary]\nreading_grade = 5\n")
    plain_service = SuggestionService(site)
    chart = CLINICAL / "af_warfarin_inr.json"
    default = compose(_all_accepted(chart)).patient.text
    plain = compose(_all_accepted(chart, plain_service)).patient.text
    assert "(atrial fibrillation)" in default
    assert "(" not in plain and "You have an irregular heartbeat." in plain
    assert grade_level(plain) < grade_level(default)
    for path in CHARTS:
        text = compose(_all_accepted(path, plain_service)).patient.text
        # Drug names are what they are ("sulfamethoxazole"): the rest is plain enough.
        assert grade_level(text) <= 5, (path.stem, text)


def test_a_plan_block_pointing_to_another_problem_keeps_the_pointer_in_the_note():
    """The composer over the shipped engine: "Statin: see Hyperlipidemia" is a line of the
    diabetes block in the note while the hyperlipidemia block is in it, and goes with it."""
    items = _all_accepted(CLINICAL / "t2d_lipids_no_statin.json")
    pointers = [
        st["text"]
        for item in items
        for st in item.statements
        if item.kind == "assessment_plan" and st.get("see") == "Hyperlipidemia"
    ]
    assert pointers and all(p.endswith(": see Hyperlipidemia") for p in pointers)
    note = compose(items).text
    for pointer in pointers:
        assert f"- {pointer}\n" in note
    without = [i for i in items if "Hyperlipidemia" not in i.title]
    assert "see Hyperlipidemia" not in compose(without).text
    # A medication named in another block keeps its words, without the dangling pointer.
    line = statement("On losartan (see Essential hypertension)", "MedicationRequest/los")
    line["see"] = "Essential hypertension"
    ckd = decided(
        "assessment_plan",
        "Assessment and plan draft: Chronic kidney disease stage 3a (rule-based, for review)",
        line,
    )
    assert compose([ckd]).text.endswith("- On losartan")
