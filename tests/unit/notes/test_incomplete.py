"""Unit: which cards are told that the chart was not read in full, and how."""

from __future__ import annotations

from smartapp.fhir.snapshot import ChartSnapshot, SnapshotProblem
from smartapp.notes.incomplete import chart_incomplete


def snapshot(*problems: SnapshotProblem) -> ChartSnapshot:
    return ChartSnapshot(patient={"resourceType": "Patient", "id": "p1"}, problems=problems)


VITALS_CUT = SnapshotProblem(
    code="truncated",
    resource_type="Observation",
    detail="Observation (vital-signs): read 400 of 538",
    newest_first=False,
)


def test_every_kind_that_draws_on_the_truncated_type_is_told():
    snap = snapshot(VITALS_CUT)
    for kind in ("problem_summary", "vitals_labs", "assessment_plan", "care_gaps", "medications"):
        assert chart_incomplete(snap, kind) == [
            {
                "resourceType": "Observation",
                "code": "truncated",
                "detail": "Observation (vital-signs): read 400 of 538",
                "latestRead": False,
            }
        ], kind
    assert chart_incomplete(snap, "allergies") == []


def test_a_cited_type_counts_even_outside_the_kind_sources():
    snap = snapshot(VITALS_CUT)
    assert chart_incomplete(snap, "allergies", ["Observation/obs-1"])[0]["code"] == "truncated"


def test_newest_first_truncation_says_the_latest_was_read():
    cut = SnapshotProblem(
        code="truncated", resource_type="Observation", detail="d", newest_first=True
    )
    [item] = chart_incomplete(snapshot(cut), "vitals_labs")
    assert item["latestRead"] is True


def test_other_problems_are_not_card_labels():
    snap = snapshot(
        SnapshotProblem(code="invalid_resource", resource_type="Observation", detail="skipped"),
        SnapshotProblem(code="search_failed", resource_type="Procedure", detail="HTTP 500"),
    )
    assert chart_incomplete(snap, "vitals_labs") == []
    assert [i["code"] for i in chart_incomplete(snap, "care_gaps")] == ["search_failed"]


def test_suggestions_api_labels_each_card_that_used_the_truncated_type(app, client):
    from dataclasses import replace

    from smartapp.fhir.cache import SnapshotCache

    from .views_support import fixture_snapshot, launch

    context = launch(app, client)
    chart = replace(fixture_snapshot(), problems=(VITALS_CUT,))
    SnapshotCache(app.extensions["smartapp.db"], ttl_seconds=600).put(context.session_id, chart)
    answer = client.get("/api/suggestions", headers={"X-CSRF-Token": context.csrf_token})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    cards = answer.get_json()["suggestions"]
    by_kind = {c["kind"]: c["chartIncomplete"] for c in cards}
    assert by_kind.get("vitals_labs") == [
        {
            "resourceType": "Observation",
            "code": "truncated",
            "detail": "Observation (vital-signs): read 400 of 538",
            "latestRead": False,
        }
    ]
    for card in cards:
        uses_observations = card["kind"] != "allergies" or any(
            c["reference"].startswith("Observation/") for c in card["citations"]
        )
        assert bool(card["chartIncomplete"]) == uses_observations, card["kind"]
