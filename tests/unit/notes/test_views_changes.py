"""Unit (Flask test client, real store and engines): `GET /api/suggestions` leads with what
changed since the last note, and its cards state each result once."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from smartapp.fhir.cache import SnapshotCache
from smartapp.fhir.parsing import build_snapshot
from smartapp.suggestions.evaluate import bundle_resources

from .views_support import launch

CHART = Path(__file__).resolve().parents[2] / "fixtures" / "clinical" / "fifteen_problems.json"


def test_suggestions_carry_the_changes_since_the_last_note_and_cross_references(app, client):
    resources, _ = bundle_resources(json.loads(CHART.read_text(encoding="utf-8")))
    snapshot = build_snapshot(
        resources, patient_id="fifteen", fetched_at=datetime(2026, 11, 23, 15, tzinfo=UTC)
    )
    context = launch(app, client, patient="fifteen")
    SnapshotCache(app.extensions["smartapp.db"], ttl_seconds=600).put(context.session_id, snapshot)

    response = client.get("/api/suggestions")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    changes = body["changes"]
    assert changes["anchor"] == {
        "kind": "note",
        "date": "2026-08-03",
        "reference": "DocumentReference/fifteen-note-2",
        "text": "the last note (Progress note, 2026-08-03)",
    }
    categories = [item["category"] for item in changes["items"]]
    assert categories == sorted(
        categories,
        key=["result", "medication_started", "medication_stopped", "problem"].index,
    )
    started = [i for i in changes["items"] if i["category"] == "medication_started"]
    assert started[-1]["text"] == "Started empagliflozin 10 MG Oral Tablet on 2026-10-25"
    assert started[-1]["citations"] == [
        {
            "reference": "MedicationRequest/fifteen-empagliflozin",
            "display": started[-1]["citations"][0]["display"],
        }
    ]
    assert all(item["verified"] is True and item["citations"] for item in changes["items"])

    # The results card points to the assessment and plan, which states the numbers.
    vitals = next(s for s in body["suggestions"] if s["kind"] == "vitals_labs")
    assert [st.get("see") for st in vitals["statements"]] == ["Assessment and plan"]
    assert "8.3%" not in vitals["text"]
    assert any(
        "HbA1c 8.3% on 2026-10-20" in s["text"]
        for s in body["suggestions"]
        if s["kind"] == "assessment_plan"
    )
