"""Integration: one draft per visit, across launches — the real app and the sandbox EHR.

Launch, decide, save; open the chart again (a new EHR launch for the same encounter) and
find the decisions and the saved draft; save again and find one DocumentReference in the
EHR, updated. Two tabs saving at once, and a draft signed in the EHR between launches.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import requests

from smartapp.notes.documents import NOTE_IDENTIFIER_SYSTEM
from tests.conftest import in_note
from tests.integration.conftest import CSRF_META, Launched, browser, ehr_launch
from tests.integration.test_outbox import accept_first, note_text


def our_notes(launched: Launched, patient: str = "pt-01") -> list[dict[str, Any]]:
    """Every note this app wrote for the patient (AI-assisted or the clinician's own text)."""
    docs = launched.sandbox(
        "GET", "/_sandbox/resources/DocumentReference", params={"patient": patient}
    ).json()
    return [
        d
        for d in docs
        if any(i.get("system") == NOTE_IDENTIFIER_SYSTEM for i in d.get("identifier", []))
    ]


pytestmark = pytest.mark.integration


def test_a_reopened_chart_shows_the_draft_and_its_decisions_and_saves_the_same_note(
    launched: Launched,
):
    accepted = accept_first(launched, "problem_summary")
    first = launched.api("POST", "/api/note")
    assert first.status_code == 201, first.text
    saved = first.json()

    again = ehr_launch(launched.stack)  # the chart closed and opened again
    assert again.csrf != launched.csrf
    suggestions = again.api("GET", "/api/suggestions").json()["suggestions"]
    decided = {s["id"]: s["decision"] for s in suggestions if s["decision"]}
    assert decided.keys() == {accepted["id"]}
    assert decided[accepted["id"]]["action"] == "accept"
    body = again.api("GET", "/api/notes").json()
    [note] = body["notes"]
    assert note["id"] == saved["note"]["id"] and note["status"] == "in_chart"
    visit = body["visit"]
    assert visit["scope"] == "encounter" and visit["encounter"]
    assert visit["draft"]["documentReference"] == saved["documentReference"]
    assert visit["draft"]["sections"] == [
        {"suggestion": accepted["id"], "title": accepted["title"]}
    ]
    assert in_note(accepted["statements"][0]["text"], visit["draft"]["text"])
    assert visit["changes"] == {"new": [], "removed": []}
    assert visit["draft"]["signed"] is False

    medications = accept_first(again, "medications")
    second = again.api("POST", "/api/note")
    assert second.status_code == 201, second.text
    assert second.json()["documentReference"] == saved["documentReference"]
    assert second.json()["note"]["revision"] == 2

    [document] = our_notes(launched)
    assert f"DocumentReference/{document['id']}" == saved["documentReference"]
    assert document["meta"]["versionId"] == "2"  # updated in place, not written again
    assert document["docStatus"] == "preliminary"
    assert in_note(medications["statements"][0]["text"], note_text(document))
    assert in_note(accepted["statements"][0]["text"], note_text(document))
    provenances = launched.sandbox(
        "GET", "/_sandbox/resources/Provenance", params={"patient": "pt-01"}
    ).json()
    assert sorted(p["activity"]["coding"][0]["code"] for p in provenances) == [
        "CREATE",
        "UPDATE",
    ]


def test_two_tabs_saving_at_once_leave_one_draft_in_the_chart(launched: Launched):
    other = ehr_launch(launched.stack)  # a second tab on the same visit
    accept_first(launched, "problem_summary")
    accept_first(other, "medications")  # decides on the same rows: the visit's
    start = threading.Barrier(2)
    answers: list[requests.Response] = []

    def save(tab: Launched, text: str) -> None:
        start.wait(30)
        answers.append(tab.api("POST", "/api/note", json={"text": text}))

    threads = [
        threading.Thread(target=save, args=(launched, "Written in tab one.")),
        threading.Thread(target=save, args=(other, "Written in tab two.")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(a.status_code for a in answers) in ([201, 201], [201, 202], [202, 202])
    notes = {a.json()["note"]["id"] for a in answers}
    assert len(notes) == 1
    # Whatever the interleaving, the outbox finishes the later revision, once.
    launched.stack.app.extensions["smartapp.outbox"].run_once(force=True)
    [document] = our_notes(launched)
    [note] = launched.api("GET", "/api/notes").json()["notes"]
    assert note["status"] == "in_chart" and note["revision"] == 2
    assert note_text(document) in ("Written in tab one.", "Written in tab two.")
    assert launched.api("GET", "/api/notes").json()["visit"]["draft"]["text"] == note_text(document)


def test_after_signing_in_the_ehr_the_next_launch_writes_a_new_draft_relating_to_it(
    launched: Launched,
):
    accept_first(launched, "problem_summary")
    first = launched.api("POST", "/api/note").json()
    store = launched.stack.ehr.extensions["smartapp.sandbox"].store
    rtype, rid = first["documentReference"].split("/")
    store.put(dict(store.get(rtype, rid).body, docStatus="final"), patient="pt-01")
    signed_version = store.get(rtype, rid).body["meta"]["versionId"]

    again = ehr_launch(launched.stack)
    assert again.api("GET", "/api/notes").json()["visit"]["draft"]["signed"] is True
    accept_first(again, "medications")
    second = again.api("POST", "/api/note").json()
    assert second["documentReference"] != first["documentReference"]
    replacement = launched.sandbox(
        "GET", f"/_sandbox/resources/{second['documentReference']}"
    ).json()
    assert replacement["docStatus"] == "preliminary"
    assert replacement["relatesTo"] == [
        {"code": "replaces", "target": {"reference": first["documentReference"]}}
    ]
    signed = launched.sandbox("GET", f"/_sandbox/resources/{first['documentReference']}").json()
    # Never written again: the version the clinician signed.
    assert signed["docStatus"] == "final" and signed["meta"]["versionId"] == signed_version
    # Saving again revises the new draft, not the signed note, and writes no third.
    third = again.api("POST", "/api/note", json={"text": "Typed after signing."}).json()
    assert third["documentReference"] == second["documentReference"]
    assert len(our_notes(launched)) == 2
    [note] = again.api("GET", "/api/notes").json()["notes"]
    assert note["documentReference"] == second["documentReference"]
    draft = launched.sandbox("GET", f"/_sandbox/resources/{second['documentReference']}").json()
    assert note_text(draft) == "Typed after signing."


def launch_without_encounter(launched: Launched) -> Launched:
    """An EHR launch with no encounter in its context (as from a patient list)."""
    stack = launched.stack
    minted = requests.post(
        f"{stack.ehr_url}/_sandbox/launch",
        json={"patient": "pt-01", "user": "dr-ada-lovelace", "encounter": None},
        timeout=30,
    )
    minted.raise_for_status()
    assert minted.json()["encounter"] is None
    session = browser()
    page = session.get(minted.json()["launch_url"], timeout=30)
    match = CSRF_META.search(page.text)
    assert page.status_code == 200 and match, page.text[:300]
    return Launched(session=session, stack=stack, csrf=match.group(1), patient="pt-01", page=page)


def test_without_an_encounter_the_visit_is_the_clinicians_day_with_the_patient(
    launched: Launched,
):
    morning = launch_without_encounter(launched)
    accepted = accept_first(morning, "problem_summary")
    first = morning.api("POST", "/api/note").json()
    later = launch_without_encounter(launched)
    visit = later.api("GET", "/api/notes").json()["visit"]
    assert visit["scope"] == "day" and visit["encounter"] is None and visit["date"]
    assert visit["draft"]["id"] == first["note"]["id"]
    decided = [
        s for s in later.api("GET", "/api/suggestions").json()["suggestions"] if s["decision"]
    ]
    assert [s["id"] for s in decided] == [accepted["id"]]
    # The launch with an encounter is another visit: its own (empty) draft.
    assert launched.api("GET", "/api/notes").json()["visit"]["draft"] is None
    second = later.api("POST", "/api/note", json={"text": "Seen today; plan unchanged."}).json()
    assert second["documentReference"] == first["documentReference"]
    assert len(our_notes(launched)) == 1
