"""What changed since the last note or visit (smartapp.suggestions.changes), on readable
FHIR fixture charts."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from smartapp.fhir.parsing import build_snapshot
from smartapp.suggestions.changes import FALLBACK_DAYS, changes_since, find_anchor
from smartapp.suggestions.charts import chart_snapshot
from smartapp.suggestions.evaluate import bundle_resources
from smartapp.suggestions.grounding import GroundingVerifier

CHARTS = Path(__file__).resolve().parents[2] / "fixtures" / "clinical"
AS_OF = date(2026, 11, 23)


def bundle(name: str = "fifteen_problems") -> dict[str, Any]:
    return json.loads((CHARTS / f"{name}.json").read_text(encoding="utf-8"))


def with_resources(base: dict[str, Any], *resources: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    out["entry"] += [{"resource": r} for r in resources]
    return out


def note(id_: str, when: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "id": id_,
        "status": "current",
        "type": {"text": "Progress note"},
        "subject": {"reference": "Patient/fifteen"},
        "date": when,
        "content": [{"attachment": {"contentType": "text/plain"}}],
        **extra,
    }


def texts(name_or_bundle: str | dict[str, Any] = "fifteen_problems") -> list[tuple[str, str]]:
    chart = bundle(name_or_bundle) if isinstance(name_or_bundle, str) else name_or_bundle
    found = changes_since(chart_snapshot(chart, AS_OF))
    return [(i.category, i.statement.text) for i in found.items]


def test_the_anchor_is_the_last_signed_note_and_it_says_so():
    anchor = find_anchor(chart_snapshot(bundle(), AS_OF), AS_OF)
    assert (anchor.kind, anchor.day, anchor.reference) == (
        "note",
        date(2026, 8, 3),
        "DocumentReference/fifteen-note-2",
    )
    assert anchor.text == "the last note (Progress note, 2026-08-03)"


def test_since_the_last_note_new_results_medications_and_problems_each_cite_their_resources():
    snapshot = chart_snapshot(bundle(), AS_OF)
    found = changes_since(snapshot)
    items = [(i.category, i.statement.text) for i in found.items]
    assert items == [
        ("result", "BP 138/82 mmHg on 2026-11-10 (was 144/86 mmHg)"),
        ("result", "Weight 106.0 kg on 2026-11-10 (was 104.2 kg)"),
        ("result", "HbA1c 8.3% on 2026-10-20 (was 7.9%)"),
        ("result", "eGFR 49 mL/min/1.73 m2 on 2026-10-20 (was 52 mL/min/1.73 m2)"),
        ("result", "Creatinine 1.42 mg/dL on 2026-10-20"),
        ("result", "Potassium 4.9 mmol/L on 2026-10-20"),
        ("result", "Hemoglobin 12.1 g/dL on 2026-10-20 (was 11.2 g/dL)"),
        ("result", "UACR 88 mg/g on 2026-10-20"),
        ("result", "NT-proBNP 620 pg/mL on 2026-11-10"),
        ("medication_started", "Started allopurinol 100 MG Oral Tablet on 2026-09-20"),
        (
            "medication_started",
            "Started tamsulosin hydrochloride 0.4 MG Oral Capsule on 2026-10-05",
        ),
        ("medication_started", "Started empagliflozin 10 MG Oral Tablet on 2026-10-25"),
        ("medication_stopped", "Glipizide 5 MG Oral Tablet stopped 2026-10-25 (hypoglycaemia)"),
        ("problem", "Gout, onset 2026-09-15"),
        ("problem", "Benign prostatic hyperplasia, onset 2026-10-05"),
    ]
    # Results from before the note (LDL, TSH) are not news.
    assert not any("LDL" in t or "TSH" in t for _, t in items)
    verifier = GroundingVerifier(snapshot)
    for item in found.items:
        assert item.statement.citations and item.statement.verified is True
        assert verifier.check(item.statement).ok
    hba1c = next(i for i in found.items if i.statement.text.startswith("HbA1c"))
    assert [c.reference for c in hba1c.statement.citations] == [
        "Observation/fifteen-a1c-3",
        "Observation/fifteen-a1c-2",
    ]
    data = found.to_json()
    assert data["anchor"] == {
        "kind": "note",
        "date": "2026-08-03",
        "reference": "DocumentReference/fifteen-note-2",
        "text": "the last note (Progress note, 2026-08-03)",
    }
    assert data["items"][2]["category"] == "result"
    assert data["items"][2]["citations"][0]["reference"] == "Observation/fifteen-a1c-3"


def test_a_draft_a_note_entered_in_error_and_a_note_of_this_visit_are_not_the_anchor():
    chart = with_resources(
        bundle(),
        note("draft", "2026-11-01T10:00:00Z", docStatus="preliminary"),
        note("wrong", "2026-11-02T10:00:00Z", status="entered-in-error"),
        note("today", "2026-11-23T08:00:00Z"),
        note(
            "visit", "2026-11-20T08:00:00Z", context={"encounter": [{"reference": "Encounter/now"}]}
        ),
        note("future", "2027-01-01T08:00:00Z"),
    )
    resources, _ = bundle_resources(chart)
    current = {
        "resourceType": "Encounter",
        "id": "now",
        "status": "in-progress",
        "class": {"code": "AMB"},
        "subject": {"reference": "Patient/fifteen"},
        "period": {"start": "2026-11-23T07:30:00Z"},
    }
    snapshot = build_snapshot(
        [*resources, current],
        patient_id="fifteen",
        encounter_id="now",
        fetched_at=datetime(2026, 11, 23, 12, tzinfo=UTC),
    )
    assert snapshot.encounter is not None
    assert find_anchor(snapshot, AS_OF).reference == "DocumentReference/fifteen-note-2"


def test_a_finished_visit_after_the_last_note_is_the_anchor_when_the_snapshot_holds_one():
    visit = {
        "resourceType": "Encounter",
        "id": "visit-oct",
        "status": "finished",
        "class": {"code": "AMB"},
        "type": [{"text": "Office visit"}],
        "subject": {"reference": "Patient/fifteen"},
        "period": {"start": "2026-10-21T09:00:00Z", "end": "2026-10-21T09:30:00Z"},
    }
    # The chart loader does not search Encounter history yet: a snapshot that holds one.
    plain = chart_snapshot(bundle(), AS_OF)
    snapshot = replace(plain, resources={**plain.resources, "Encounter": (visit,)})
    found = changes_since(snapshot)
    assert found.anchor.kind == "visit"
    assert found.anchor.text == "the last visit (Office visit, 2026-10-21)"
    # Only what came after the visit: the November readings, empagliflozin, and the stop.
    assert [i.statement.text for i in found.items] == [
        "BP 138/82 mmHg on 2026-11-10 (was 144/86 mmHg)",
        "Weight 106.0 kg on 2026-11-10 (was 104.2 kg)",
        "NT-proBNP 620 pg/mL on 2026-11-10",
        "Started empagliflozin 10 MG Oral Tablet on 2026-10-25",
        "Glipizide 5 MG Oral Tablet stopped 2026-10-25 (hypoglycaemia)",
    ]


def test_without_a_note_or_visit_the_last_ninety_days_are_shown_and_said():
    found = changes_since(chart_snapshot(bundle("t2d_htn_ckd"), AS_OF))
    assert found.anchor.kind == "window"
    assert found.anchor.reference is None
    assert found.anchor.day == date(2026, 8, 25)
    assert str(FALLBACK_DAYS) in found.anchor.text
    assert ("result", "HbA1c 8.6% on 2026-10-20 (was 8.1%)") in [
        (i.category, i.statement.text) for i in found.items
    ]


def test_an_item_the_chart_does_not_bear_out_is_left_out():
    chart = bundle()
    for entry in chart["entry"]:
        resource = entry["resource"]
        if resource.get("id") == "fifteen-gout":
            # The onset is the news; a problem with no dates says nothing about when.
            del resource["onsetDateTime"]
            del resource["recordedDate"]
    assert ("problem", "Gout, onset 2026-09-15") not in texts(chart)


def _obs(id_: str, loinc: str, value: float, unit: str, when: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": "Patient/fifteen"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit},
        **extra,
    }


def test_a_full_panel_since_the_note_shows_only_its_news():
    normal = {"referenceRange": [{"low": {"value": 7, "unit": "U/L"}, "high": {"value": 56}}]}
    chart = with_resources(
        bundle(),
        # A routine panel: an ALT in range, and an unchanged heart rate, are not news...
        _obs("alt-1", "1742-6", 20, "U/L", "2026-10-20", **normal),
        _obs("hr-0", "8867-4", 67, "beats/minute", "2026-07-01"),
        _obs("hr-1", "8867-4", 67, "beats/minute", "2026-11-10"),
        # ...an ALT out of the lab's range is, whatever the test.
        _obs("ast-1", "1920-8", 190, "U/L", "2026-10-20", referenceRange=[{"high": {"value": 40}}]),
    )
    shown = [t for c, t in texts(chart) if c == "result"]
    assert "AST 190 U/L on 2026-10-20" in shown
    assert not any(t.startswith(("ALT", "Heart rate")) for t in shown)
