"""Unit (real store: SQLite, and PostgreSQL when configured): one draft per visit.

The sidebar service with a chart source, a drafter and an EHR of this file's own: a
visit's decisions and saved draft reach its next launch, saving again revises the one
note, and two tabs saving at the same moment still leave one note in the store and one
DocumentReference in the EHR. The races are forced, not hoped for: a statement hook
holds one thread just before its write until the other thread has saved.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import event, func, select

from smartapp.db import Database, utcnow
from smartapp.errors import NotFound, TemporaryUpstreamError
from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.notes.documents import NOTE_IDENTIFIER_SYSTEM
from smartapp.notes.drafting import DraftPlan, Drafts
from smartapp.notes.models import SavedNote
from smartapp.notes.service import SidebarService
from smartapp.notes.visits import visit_of
from smartapp.smart.scopes import GrantedScopes
from smartapp.smart.session import LaunchContext
from smartapp.suggestions.interfaces import Citation, EngineInfo, Statement, Suggestion
from tests.unit.admin.conftest import database, postgres_url  # noqa: F401  (fixtures)

ISS = "http://ehr.test/fhir"
SCOPE = "launch openid fhirUser patient/*.rs patient/DocumentReference.c"
ENGINE = EngineInfo(name="builtin-rules", version="1.0.0", rule_based=True)
KINDS = ("problem_summary", "medications")


def launch_for(
    session_id: str,
    *,
    encounter: str | None = "enc-1",
    user: str | None = "Practitioner/1",
    patient: str = "p1",
    iss: str = ISS,
    created_at: datetime | None = None,
) -> LaunchContext:
    return LaunchContext(
        session_id=session_id,
        iss=iss,
        patient_id=patient,
        encounter_id=encounter,
        fhir_user=user,
        fhir_user_raw=user,
        need_patient_banner=False,
        smart_style_url=None,
        scopes=GrantedScopes(SCOPE),
        csrf_token=f"csrf-{session_id}",
        purpose="clinician",
        created_at=created_at or utcnow(),
    )


# -- the visit key ----------------------------------------------------------------------


def test_launches_of_one_encounter_share_the_visit_and_others_do_not():
    first = visit_of(launch_for("l1"))
    assert visit_of(launch_for("l2")).key == first.key
    assert first.scope == "encounter" and len(first.key) == 64
    others = [
        launch_for("l3", encounter="enc-2"),
        launch_for("l4", user="Practitioner/2"),
        launch_for("l5", patient="p2"),
        launch_for("l6", iss="http://other-ehr.test/fhir"),
    ]
    assert len({visit_of(o).key for o in others} | {first.key}) == 5


def test_without_an_encounter_the_visit_is_the_clinicians_day_for_the_patient_in_the_site_zone():
    tokyo = ZoneInfo("Asia/Tokyo")
    # 23:30 UTC on 1 December is already 2 December in Tokyo.
    late = launch_for("l1", encounter=None, created_at=datetime(2026, 12, 1, 23, 30, tzinfo=UTC))
    morning = launch_for("l2", encounter=None, created_at=datetime(2026, 12, 2, 9, 0, tzinfo=UTC))
    assert visit_of(late, timezone=tokyo).day.isoformat() == "2026-12-02"
    assert visit_of(late, timezone=tokyo).key == visit_of(morning, timezone=tokyo).key
    assert visit_of(late).day.isoformat() == "2026-12-01"  # UTC: another day, another visit
    assert visit_of(late).key != visit_of(morning).key
    assert visit_of(late).scope == "day"


def test_without_a_clinician_each_launch_is_its_own_visit():
    # The EHR did not say who is signed in: never merge two people's drafts.
    assert visit_of(launch_for("l1", user=None)).key != visit_of(launch_for("l2", user=None)).key
    assert visit_of(launch_for("l1", user=None)).scope == "launch"


# -- the fakes --------------------------------------------------------------------------


class Chart:
    """Each launch reads the chart once, at its own time; the drafter says what it sees."""

    def __init__(self) -> None:
        self.read: dict[str, ChartSnapshot] = {}
        self.clock = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)

    def snapshot(
        self, launch: LaunchContext, *, refresh: bool = False, reread: bool = False
    ) -> ChartSnapshot:
        if refresh or launch.session_id not in self.read:
            self.clock += timedelta(minutes=1)
            patient = {"resourceType": "Patient", "id": launch.patient_id}
            self.read[launch.session_id] = ChartSnapshot(patient=patient, fetched_at=self.clock)
        return self.read[launch.session_id]

    def cached(self, launch: LaunchContext) -> ChartSnapshot | None:
        return self.read.get(launch.session_id)

    def patient(self, launch: LaunchContext) -> dict[str, Any]:
        return {"resourceType": "Patient", "id": launch.patient_id}


def suggestion(kind: str, text: str) -> Suggestion:
    return Suggestion(
        kind=kind,
        title=kind.replace("_", " ").capitalize(),
        statements=(
            Statement(text=text, citations=(Citation(reference="Condition/c1", display="c"),)),
        ),
        engine=ENGINE,
    )


@dataclass
class Drafter:
    texts: dict[str, str] = field(
        default_factory=lambda: {
            "problem_summary": "Type 2 diabetes since 2019.",
            "medications": "Metformin 500 mg twice daily.",
        }
    )

    def plan(
        self, *, iss: str, fhir_user: str | None, governance_version: int | None = None
    ) -> DraftPlan:
        return DraftPlan(kinds=KINDS)

    def draft(self, snapshot: ChartSnapshot, *, iss: str, plan: DraftPlan) -> Drafts:
        return Drafts(
            suggestions=[suggestion(k, self.texts[k]) for k in plan.kinds if k in self.texts]
        )


class FakeEHR:
    """DocumentReference create (conditional on our identifier), read, update; Provenance."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.documents: dict[str, dict[str, Any]] = {}
        self.provenances: list[dict[str, Any]] = []
        self.calls: list[str] = []

    def capabilities(self) -> dict[str, Any]:
        return {"resourceType": "CapabilityStatement", "rest": [{"mode": "server"}]}

    def create(self, resource: dict[str, Any], *, if_none_exist: str | None = None) -> Any:
        with self.lock:
            self.calls.append(f"create {resource['resourceType']}")
            if resource["resourceType"] == "Provenance":
                stored = {**resource, "id": f"prov-{len(self.provenances) + 1}"}
                self.provenances.append(stored)
                return stored
            for document in self.documents.values():
                if if_none_exist and if_none_exist.endswith(document["identifier"][0]["value"]):
                    return document
            stored = {**resource, "id": f"doc-{len(self.documents) + 1}", "version": 1}
            self.documents[stored["id"]] = stored
            return stored

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        with self.lock:
            return dict(self.documents[resource_id])

    def update(self, resource: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.calls.append("update DocumentReference")
            version = self.documents[resource["id"]]["version"] + 1
            self.documents[resource["id"]] = {**resource, "version": version}
            return self.documents[resource["id"]]

    def sign(self, resource_id: str) -> None:
        with self.lock:
            self.documents[resource_id]["docStatus"] = "final"


@dataclass
class Sidebar:
    service: SidebarService
    chart: Chart
    drafter: Drafter
    ehr: FakeEHR
    db: Database

    def accept(self, launch: LaunchContext, kind: str) -> str:
        row = next(r for r in self.service.suggestions(launch).rows if r.kind == kind)
        self.service.decide(launch, row.id, action="accept")
        return row.id

    def notes(self) -> list[SavedNote]:
        with self.db.session() as session:
            return list(session.scalars(select(SavedNote)))


@pytest.fixture
def sidebar(database: Database) -> Sidebar:  # noqa: F811
    chart, drafter, ehr = Chart(), Drafter(), FakeEHR()
    service = SidebarService(
        database=database, snapshots=chart, drafter=drafter, fhir_for=lambda _launch: ehr
    )
    return Sidebar(service=service, chart=chart, drafter=drafter, ehr=ehr, db=database)


# -- reopening the chart ----------------------------------------------------------------


def test_a_new_launch_of_the_visit_shows_the_decisions_and_the_saved_draft(sidebar: Sidebar):
    first = launch_for("l1")
    accepted = sidebar.accept(first, "problem_summary")
    saved = sidebar.service.save_note(first)
    assert saved.written is not None

    again = launch_for("l2")
    rows = sidebar.service.suggestions(again).rows
    by_kind = {r.kind: r for r in rows}
    assert by_kind["problem_summary"].id == accepted  # the same suggestion, not a copy
    assert by_kind["problem_summary"].latest_decision().action == "accept"
    assert by_kind["medications"].latest_decision() is None
    state = sidebar.service.visit_state(again)
    assert state["scope"] == "encounter" and state["encounter"] == "enc-1"
    assert state["draft"]["id"] == saved.note.id
    assert state["draft"]["status"] == "in_chart"
    assert state["draft"]["text"] == saved.note.text
    assert state["draft"]["sections"] == [{"suggestion": accepted, "title": "Problem summary"}]
    assert state["changes"] == {"new": [], "removed": []}
    assert state["draft"]["signed"] is False  # read from the EHR: still a preliminary draft
    # The note assembled in the new launch is the saved one: nothing new to save.
    assert sidebar.service.compose_note(again).text == saved.note.text


def test_an_ehr_that_does_not_answer_leaves_signed_unknown(sidebar: Sidebar):
    sidebar.accept(launch_for("l1"), "problem_summary")
    sidebar.service.save_note(launch_for("l1"))

    def down(resource_type: str, resource_id: str) -> dict[str, Any]:
        raise TemporaryUpstreamError("The EHR did not answer.")

    sidebar.ehr.read = down  # type: ignore[method-assign]
    draft = sidebar.service.visit_state(launch_for("l2"))["draft"]
    assert draft["status"] == "in_chart" and draft["signed"] is None


def test_another_encounter_starts_a_visit_of_its_own(sidebar: Sidebar):
    sidebar.accept(launch_for("l1"), "problem_summary")
    sidebar.service.save_note(launch_for("l1"))
    other = launch_for("l2", encounter="enc-2")
    assert all(r.latest_decision() is None for r in sidebar.service.suggestions(other).rows)
    assert sidebar.service.visit_state(other)["draft"] is None


def test_a_decision_from_another_visit_is_refused(sidebar: Sidebar):
    row = sidebar.service.suggestions(launch_for("l1")).rows[0]
    with pytest.raises(NotFound):
        sidebar.service.decide(launch_for("l2", patient="p2"), row.id, action="accept")


def test_what_changed_in_the_chart_since_the_draft_is_marked(sidebar: Sidebar):
    first = launch_for("l1")
    kept = sidebar.accept(first, "problem_summary")
    changed = sidebar.accept(first, "medications")
    sidebar.service.save_note(first)

    # The medication list changed in the EHR before the chart was opened again.
    sidebar.drafter.texts["medications"] = "Metformin 1 g twice daily."
    again = launch_for("l2")
    rows = {r.kind: r for r in sidebar.service.suggestions(again).rows}
    assert rows["problem_summary"].id == kept
    assert rows["medications"].id != changed
    changes = sidebar.service.visit_state(again)["changes"]
    assert changes["new"] == [rows["medications"].id]
    assert changes["removed"] == [{"id": changed, "kind": "medications", "title": "Medications"}]


# -- saving again -----------------------------------------------------------------------


def test_saving_in_a_new_launch_updates_the_same_document_reference(sidebar: Sidebar):
    first = launch_for("l1")
    sidebar.accept(first, "problem_summary")
    one = sidebar.service.save_note(first)
    again = launch_for("l2")
    sidebar.accept(again, "medications")
    two = sidebar.service.save_note(again)

    [note] = sidebar.notes()
    assert note.revision == 2 and note.launch_session_id == "l2"
    assert two.written.document_reference == one.written.document_reference
    [document] = sidebar.ehr.documents.values()
    assert document["version"] == 2 and document["docStatus"] == "preliminary"
    assert sidebar.ehr.calls.count("create DocumentReference") == 1
    assert sidebar.ehr.calls.count("update DocumentReference") == 1
    # Unchanged: nothing is written.
    before = list(sidebar.ehr.calls)
    assert sidebar.service.save_note(launch_for("l3")).note.revision == 2
    assert sidebar.ehr.calls == before


def test_after_signing_the_next_save_is_a_new_draft_replacing_the_signed_note(sidebar: Sidebar):
    first = launch_for("l1")
    sidebar.accept(first, "problem_summary")
    one = sidebar.service.save_note(first)
    signed_id = one.written.document_reference.split("/")[1]
    sidebar.ehr.sign(signed_id)

    again = launch_for("l2")
    # The reopened chart knows: the next save is a new draft, not "for you to sign".
    assert sidebar.service.visit_state(again)["draft"]["signed"] is True
    sidebar.accept(again, "medications")
    two = sidebar.service.save_note(again)
    assert two.written.document_reference != one.written.document_reference
    assert sidebar.service.visit_state(again)["draft"]["signed"] is False  # the new draft
    new_id = two.written.document_reference.split("/")[1]
    replacement = sidebar.ehr.documents[new_id]
    assert replacement["relatesTo"] == [
        {"code": "replaces", "target": {"reference": one.written.document_reference}}
    ]
    assert replacement["docStatus"] == "preliminary"
    assert sidebar.ehr.documents[signed_id]["docStatus"] == "final"
    assert "Metformin" not in str(sidebar.ehr.documents[signed_id]["content"])
    [note] = sidebar.notes()  # still the visit's one note, now pointing at the new draft
    assert note.document_reference == two.written.document_reference


# -- two tabs saving at once ------------------------------------------------------------


@dataclass
class Hold:
    reached: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.go.set()


@contextmanager
def held_before(db: Database, pattern: str, thread: threading.Thread) -> Iterator[Hold]:
    """Hold `thread` just before its first statement matching `pattern` until released."""
    hold = Hold()
    matcher = re.compile(pattern, re.DOTALL)
    fired: list[bool] = []

    def before(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if threading.current_thread() is thread and not fired and matcher.search(statement):
            fired.append(True)
            hold.reached.set()
            assert hold.go.wait(30), "the other tab never finished"

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        yield hold
    finally:
        hold.go.set()
        event.remove(db.engine, "before_cursor_execute", before)


def race(sidebar: Sidebar, pattern: str, first: LaunchContext, second: LaunchContext) -> list:
    """Tab one is held just before its write; tab two saves; then tab one goes on."""
    results: list[Any] = []
    errors: list[BaseException] = []

    def save_first() -> None:
        try:
            results.append(sidebar.service.save_note(first))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    tab_one = threading.Thread(target=save_first)
    with held_before(sidebar.db, pattern, tab_one) as hold:
        tab_one.start()
        assert hold.reached.wait(30), "tab one never reached its write"
        results.append(sidebar.service.save_note(second))
        hold.release()
        tab_one.join(30)
    assert not errors, errors
    return results


def test_two_tabs_saving_the_first_draft_at_once_make_one_note(sidebar: Sidebar):
    one, two = launch_for("tab-1"), launch_for("tab-2")
    sidebar.accept(one, "problem_summary")
    sidebar.service.suggestions(two)
    # Tab two sees tab one's decision (the same visit) and adds its own.
    sidebar.accept(two, "medications")

    # Tab one read "no note yet" and is held before its insert; tab two saves first.
    second_saved, first_saved = race(sidebar, r"^INSERT INTO saved_note", one, two)
    [note] = sidebar.notes()
    assert first_saved.note.id == second_saved.note.id == note.id
    # Tab one's insert hit uq_note_visit; it read tab two's note, found the same text
    # already in the chart, and wrote nothing.
    assert note.revision == 1 and note.chart_revision == 1
    assert len(sidebar.ehr.documents) == 1
    assert sidebar.ehr.calls == ["create DocumentReference", "create Provenance"]


def test_two_tabs_revising_at_once_keep_one_note_and_the_last_text(sidebar: Sidebar):
    one, two = launch_for("tab-1"), launch_for("tab-2")
    sidebar.accept(one, "problem_summary")
    sidebar.service.save_note(one)
    sidebar.accept(two, "medications")  # tab two's note now has both sections

    # Tab one saves a note text of its own while tab two saves the assembled one.
    results: list[Any] = []

    def typed() -> None:
        results.append(sidebar.service.save_note(one, text="Typed in tab one."))

    tab_one = threading.Thread(target=typed)
    with held_before(sidebar.db, r"^UPDATE saved_note SET .*\brevision=", tab_one) as hold:
        tab_one.start()
        assert hold.reached.wait(30)
        from_two = sidebar.service.save_note(two)
        hold.release()
        tab_one.join(30)
    [from_one] = results
    [note] = sidebar.notes()
    # Tab one's compare-and-set lost to tab two's, read the note again and revised it.
    assert note.revision == 3 and note.text == "Typed in tab one."
    assert from_one.note.id == from_two.note.id == note.id
    # Tab two's delivery was done when tab one sent its own revision: the same document.
    assert note.chart_revision == 3 and from_one.written is not None
    [document] = sidebar.ehr.documents.values()
    assert sidebar.ehr.calls.count("create DocumentReference") == 1
    assert sidebar.ehr.calls.count("update DocumentReference") == 2
    assert document["version"] == 3
    assert document["identifier"][0]["system"] == NOTE_IDENTIFIER_SYSTEM
    assert _text(document) == "Typed in tab one."


def test_two_threads_saving_freely_never_make_a_second_note(sidebar: Sidebar):
    """No forced interleaving: whatever order the store sees, one note and one document."""
    tabs = [launch_for(f"tab-{i}") for i in range(4)]
    sidebar.accept(tabs[0], "problem_summary")
    start = threading.Barrier(len(tabs))
    errors: list[BaseException] = []

    def save(launch: LaunchContext, n: int) -> None:
        try:
            start.wait(30)
            sidebar.service.save_note(launch, text=f"Note from tab {n}.")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(t, i)) for i, t in enumerate(tabs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with sidebar.db.session() as session:
        assert session.scalar(select(func.count()).select_from(SavedNote)) == 1
    [note] = sidebar.notes()
    if note.chart_revision < note.revision:
        sidebar.service.deliver(note.id, client=sidebar.ehr)  # type: ignore[arg-type]
    assert sidebar.ehr.calls.count("create DocumentReference") == 1
    assert len(sidebar.ehr.documents) == 1
    assert _text(next(iter(sidebar.ehr.documents.values()))) == note.text


def _text(document: dict[str, Any]) -> str:
    return base64.b64decode(document["content"][0]["attachment"]["data"]).decode()


def test_two_launches_drafting_at_once_keep_one_set_with_its_decisions(sidebar: Sidebar):
    """Tab one read the chart first but is held before its first write; tab two (a newer
    read) drafts and carries the visit's rows. Tab one's draft is discarded and it shows
    tab two's set: the same ids, the decision kept, no undecided copies for the note."""
    decided = sidebar.accept(launch_for("l0"), "problem_summary")
    one, two = launch_for("tab-1"), launch_for("tab-2")
    seen: list[Any] = []
    tab_one = threading.Thread(target=lambda: seen.append(sidebar.service.suggestions(one)))
    with held_before(sidebar.db, r"^INSERT INTO drafted_kind", tab_one) as hold:
        tab_one.start()
        assert hold.reached.wait(30)
        from_two = sidebar.service.suggestions(two).rows
        hold.release()
        tab_one.join(30)
    [from_one] = seen
    assert [r.id for r in from_one.rows] == [r.id for r in from_two]
    assert {r.kind: r for r in from_two}["problem_summary"].id == decided
    assert {r.kind: r for r in from_one.rows}["problem_summary"].latest_decision() is not None
    # The note either tab saves has the decided section.
    assert sidebar.service.compose_note(one).text == sidebar.service.compose_note(two).text
    assert sidebar.service.compose_note(one).text
    # Tab one's next request still shows the visit's set (its own read is the older one).
    assert [r.id for r in sidebar.service.suggestions(one).rows] == [r.id for r in from_two]
