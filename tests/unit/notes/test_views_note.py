"""Unit: the note preview is the note written to the chart, and its AI label is earned.

The real app and drafter, a fixture chart, and a fake EHR that keeps what it is sent.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from smartapp.admin.metrics import notes_written
from smartapp.db import utcnow
from smartapp.notes.models import CLINICAL_NOTE, SavedNote
from smartapp.notes.service import SidebarService
from smartapp.smart.models import LaunchSession
from tests.unit.notes.views_support import SnapshotSource, fixture_snapshot, launch


class FakeEHR:
    """Takes transactions (note + Provenance) and keeps them."""

    def __init__(self) -> None:
        self.bundles: list[dict[str, Any]] = []
        self.revised: list[dict[str, Any]] = []

    def capabilities(self) -> dict[str, Any]:
        return {"rest": [{"mode": "server", "interaction": [{"code": "transaction"}]}]}

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        self.bundles.append(bundle)
        n = len(self.bundles)
        return {
            "entry": [
                {"response": {"location": f"DocumentReference/doc{n}/_history/1"}},
                {"response": {"location": f"Provenance/prov{n}/_history/1"}},
            ]
        }

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """A document written (the sidebar asks whether the visit's draft was signed)."""
        written = self.bundles[int(resource_id.removeprefix("doc")) - 1]["entry"][0]["resource"]
        return {**written, "id": resource_id}

    def update(self, resource: dict[str, Any]) -> dict[str, Any]:
        """A revised draft (saving again), kept in place."""
        self.revised.append(resource)
        return resource

    def create(self, resource: dict[str, Any], if_none_exist: str | None = None) -> dict[str, Any]:
        """A revision's Provenance."""
        self.revised.append(resource)
        return {**resource, "id": f"rev{len(self.revised)}"}

    def document(self) -> dict[str, Any]:
        return self.bundles[-1]["entry"][0]["resource"]

    def provenance(self) -> dict[str, Any]:
        return self.bundles[-1]["entry"][1]["resource"]

    def text(self) -> str:
        data = self.document()["content"][0]["attachment"]["data"]
        return base64.b64decode(data).decode("utf-8")


@pytest.fixture
def ehr(app) -> FakeEHR:
    fake = FakeEHR()
    real: SidebarService = app.extensions["smartapp.sidebar"]
    app.extensions["smartapp.sidebar"] = SidebarService(
        database=app.extensions["smartapp.db"],
        snapshots=SnapshotSource(fixture_snapshot()),
        drafter=real._drafter,
        fhir_for=lambda _launch: fake,
        note_layout=real.note_layout,
        summary_config=real.summary_config,
    )
    return fake


def _api(client: Any, context: Any, method: str, path: str, **kwargs: Any) -> Any:
    return client.open(path, method=method, headers={"X-CSRF-Token": context.csrf_token}, **kwargs)


def _accept(client: Any, context: Any, kind: str) -> dict[str, Any]:
    suggestions = _api(client, context, "GET", "/api/suggestions").get_json()["suggestions"]
    chosen = next(s for s in suggestions if s["kind"] == kind)
    answer = _api(
        client,
        context,
        "POST",
        f"/api/suggestions/{chosen['id']}/feedback",
        json={"action": "accept"},
    )
    assert answer.status_code == 200, answer.get_json()
    return chosen


def test_preview_is_exactly_the_note_written(app, client, ehr):
    context = launch(app, client)
    empty = _api(client, context, "GET", "/api/note/preview").get_json()
    assert empty["text"] == "" and empty["sections"] == [] and empty["aiAssisted"] is False
    accepted = _accept(client, context, "problem_summary")
    preview = _api(client, context, "GET", "/api/note/preview").get_json()
    assert preview["text"].startswith("Subjective\n- ")
    assert accepted["title"] not in preview["text"]  # no card title, no engine label
    assert preview["type"] == {
        "system": "http://loinc.org",
        "code": "11506-3",
        "display": "Progress note",
    }
    assert preview["aiAssisted"] is True and preview["suggestions"] == [accepted["id"]]
    saved = _api(client, context, "POST", "/api/note")
    assert saved.status_code == 201, saved.get_json()
    assert ehr.text() == preview["text"]
    assert ehr.document()["type"]["coding"][0]["code"] == "11506-3"
    assert ehr.document()["meta"]["security"][0]["code"] == "AIAST"
    assert [c["resourceType"] for c in ehr.provenance()["contained"]] == ["Device"]


def test_note_of_the_clinicians_own_text_is_not_labelled_ai(app, client, ehr):
    context = launch(app, client)
    _accept(client, context, "problem_summary")
    saved = _api(
        client, context, "POST", "/api/note", json={"text": "Seen today; doing well. Recheck 3 mo."}
    )
    assert saved.status_code == 201, saved.get_json()
    document = ehr.document()
    assert ehr.text() == "Seen today; doing well. Recheck 3 mo."
    assert "meta" not in document
    assert document["description"] == "Draft progress note"
    provenance = ehr.provenance()
    assert "contained" not in provenance and "meta" not in provenance
    assert all(not a["who"]["reference"].startswith("#") for a in provenance["agent"])


def test_own_text_still_marked_unverified_is_refused(app, client, ehr):
    context = launch(app, client)
    _accept(client, context, "problem_summary")
    answer = _api(
        client, context, "POST", "/api/note", json={"text": "- [unverified] Potassium 6.9"}
    )
    assert answer.status_code == 400
    assert "[unverified]" in answer.get_json()["error"]["message"]
    assert ehr.bundles == []


def test_patient_instructions_go_to_a_separate_after_visit_summary(app, client, ehr):
    context = launch(app, client)
    _accept(client, context, "problem_summary")
    _accept(client, context, "patient_instructions")
    preview = _api(client, context, "GET", "/api/note/preview").get_json()
    summary = preview["afterVisitSummary"]
    assert summary["offered"] is True and summary["text"].startswith("- You ")
    assert summary["type"]["code"] == "69730-0" and summary["targetGrade"] == 6
    assert summary["readingGrade"] <= summary["targetGrade"]
    assert "You " not in preview["text"]  # never in the clinician's note

    # Without the clinician's choice, only the note is written.
    only_note = _api(client, context, "POST", "/api/note")
    assert only_note.status_code == 201 and "afterVisitSummary" not in only_note.get_json()
    assert len(ehr.bundles) == 1

    both = _api(client, context, "POST", "/api/note", json={"afterVisitSummary": True})
    assert both.status_code == 201, both.get_json()
    answer = both.get_json()
    assert answer["afterVisitSummary"]["status"] == "in_chart"
    assert answer["afterVisitSummary"]["note"]["kind"] == "after_visit_summary"
    assert answer["note"]["kind"] == "note"
    assert len(ehr.bundles) == 2  # the note was unchanged: only the summary is new
    document = ehr.document()
    assert document["type"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "69730-0",
        "display": "Instructions",
    }
    assert document["content"][0]["attachment"]["title"] == "After-visit summary (draft)"
    assert ehr.text() == summary["text"]
    assert document["meta"]["security"][0]["code"] == "AIAST"  # drafted by an engine

    # Saving both again changes nothing: still one summary for the visit.
    again = _api(client, context, "POST", "/api/note", json={"afterVisitSummary": True})
    assert (
        again.get_json()["afterVisitSummary"]["note"]["id"]
        == answer["afterVisitSummary"]["note"]["id"]
    )
    assert len(ehr.bundles) == 2
    notes = _api(client, context, "GET", "/api/notes").get_json()["notes"]
    assert sorted(n["kind"] for n in notes) == ["after_visit_summary", "note"]
    # The governance metrics count notes, not the patient's summaries.
    with app.extensions["smartapp.db"].session() as session:
        [group] = notes_written(session, group_by="site")
    assert group.saved == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"afterVisitSummary": "yes"}, "afterVisitSummary must be true or false"),
        ({"afterVisitSummary": True}, "No patient instructions to save"),
    ],
)
def test_after_visit_summary_bad_requests_are_clear(app, client, ehr, body, message):
    context = launch(app, client)
    _accept(client, context, "problem_summary")
    answer = _api(client, context, "POST", "/api/note", json=body)
    assert answer.status_code == 400
    assert message in answer.get_json()["error"]["message"]
    assert ehr.bundles == []


def _launched_minutes_ago(app: Any, context: Any, minutes: int) -> None:
    """The launch began `minutes` ago (time in the sidebar is held to launch → save)."""
    with app.extensions["smartapp.db"].session() as s:
        row = s.get(LaunchSession, context.session_id)
        row.created_at = utcnow() - timedelta(minutes=minutes)


def _seconds_in_sidebar(app: Any) -> float | None:
    with app.extensions["smartapp.db"].session() as s:
        return s.scalars(
            select(SavedNote.seconds_in_sidebar).where(SavedNote.document_kind == CLINICAL_NOTE)
        ).one()


def test_time_in_the_sidebar_adds_up_over_saves_and_never_exceeds_launch_to_save(app, client, ehr):
    context = launch(app, client)
    _launched_minutes_ago(app, context, 5)
    _accept(client, context, "problem_summary")
    first = _api(client, context, "POST", "/api/note", json={"secondsInSidebar": 42.5})
    assert first.status_code == 201, first.get_json()
    assert _seconds_in_sidebar(app) == 42.5
    _accept(client, context, "assessment_plan")
    second = _api(client, context, "POST", "/api/note", json={"secondsInSidebar": 20})
    assert second.status_code == 201, second.get_json()
    assert _seconds_in_sidebar(app) == 62.5  # the page reports what it saw since its last save
    _api(
        client, context, "POST", "/api/note", json={"text": "Seen; well.", "secondsInSidebar": 900}
    )
    # Five minutes from the launch to this save: the sidebar cannot have been seen longer.
    assert 299 <= _seconds_in_sidebar(app) <= 301


def test_a_save_without_time_in_the_sidebar_records_none(app, client, ehr):
    context = launch(app, client)
    _accept(client, context, "problem_summary")
    assert _api(client, context, "POST", "/api/note").status_code == 201
    assert _seconds_in_sidebar(app) is None


@pytest.mark.parametrize("value", [-1, "30", True, 86_401, [1]])
def test_time_in_the_sidebar_must_be_a_plausible_number_of_seconds(app, client, ehr, value):
    context = launch(app, client)
    _accept(client, context, "problem_summary")
    answer = _api(client, context, "POST", "/api/note", json={"secondsInSidebar": value})
    assert answer.status_code == 400
    assert "secondsInSidebar" in answer.get_json()["error"]["message"]
    assert ehr.bundles == []
