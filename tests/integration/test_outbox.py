"""Integration: nothing lost, nothing twice — the note outbox and feedback forwarding.

The EHR failing during a save, the app process killed with a note still undelivered,
saving again, and decisions forwarded to an engine's CDS Hooks feedback endpoint.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select

from smartapp.config import PROJECT_ROOT
from smartapp.notes.documents import NOTE_IDENTIFIER_SYSTEM
from smartapp.notes.models import SavedNote
from smartapp.notes.outbox import OutboxWorker
from smartapp.sandbox.ehr import create_ehr_app
from smartapp.sandbox.server import BackgroundServer
from smartapp.smart.models import HeldGrant, LaunchSession
from tests.integration.conftest import Launched, app_environ, browser, ehr_launch, start_stack

pytestmark = pytest.mark.integration


def our_notes(launched: Launched, patient: str = "pt-01") -> list[dict[str, Any]]:
    docs = launched.sandbox(
        "GET", "/_sandbox/resources/DocumentReference", params={"patient": patient}
    ).json()
    # The app's notes carry its identifier; the AI label only when an engine drafted text.
    return [
        d
        for d in docs
        if any(i.get("system") == NOTE_IDENTIFIER_SYSTEM for i in d.get("identifier", []))
    ]


def note_text(document: dict[str, Any]) -> str:
    return base64.b64decode(document["content"][0]["attachment"]["data"]).decode()


def accept_first(launched: Launched, kind: str = "problem_summary") -> dict[str, Any]:
    suggestions = launched.api("GET", "/api/suggestions").json()["suggestions"]
    chosen = next(s for s in suggestions if s["kind"] == kind)
    assert launched.api(
        "POST", f"/api/suggestions/{chosen['id']}/feedback", json={"action": "accept"}
    ).ok
    return chosen


def test_saving_again_updates_the_same_draft(launched: Launched):
    accept_first(launched, "problem_summary")
    first = launched.api("POST", "/api/note").json()
    accept_first(launched, "medications")
    second = launched.api("POST", "/api/note").json()
    assert second["documentReference"] == first["documentReference"]
    assert second["provenance"] != first["provenance"]
    [document] = our_notes(launched)
    assert "Medication" in note_text(document)
    assert document["meta"]["versionId"] == "2"
    revision = launched.sandbox("GET", f"/_sandbox/resources/{second['provenance']}").json()
    assert revision["activity"]["coding"][0]["code"] == "UPDATE"
    # Saving an unchanged note writes nothing new.
    third = launched.api("POST", "/api/note").json()
    assert third["provenance"] == second["provenance"]
    assert (
        len(
            launched.sandbox(
                "GET", "/_sandbox/resources/Provenance", params={"patient": "pt-01"}
            ).json()
        )
        == 2
    )


def test_ehr_down_during_save_then_back_delivers_exactly_once(launched: Launched):
    accept_first(launched)
    launched.sandbox("POST", "/_sandbox/faults", json={"fail_next": 1000, "status": 503})
    saved = launched.api("POST", "/api/note")
    assert saved.status_code == 202
    assert saved.json()["status"] == "pending"
    assert launched.api("GET", "/api/notes").json()["notes"][0]["status"] == "pending"

    outbox = launched.stack.app.extensions["smartapp.outbox"]
    assert outbox.run_once(force=True).notes_waiting == 1  # still down: kept
    launched.sandbox("DELETE", "/_sandbox/faults")
    assert outbox.run_once(force=True).notes_delivered == 1
    assert outbox.run_once(force=True).notes_delivered == 0  # nothing left, nothing resent

    [note] = launched.api("GET", "/api/notes").json()["notes"]
    assert note["status"] == "in_chart"
    assert len(our_notes(launched)) == 1


def test_a_lost_response_does_not_write_the_note_twice(launched: Launched):
    """The EHR stores the note but the answer never arrives; the retry finds it."""
    accept_first(launched)
    stack = launched.stack
    saved = launched.api("POST", "/api/note").json()
    with stack.app.extensions["smartapp.db"].session() as s:
        note = s.get(SavedNote, saved["note"]["id"])
        # Forget that it arrived, as if the response had been lost.
        note.status, note.document_reference, note.provenance = "pending", None, None
        note.chart_revision = note.document_revision = 0
    assert stack.app.extensions["smartapp.outbox"].run_once(force=True).notes_delivered == 1
    assert len(our_notes(launched)) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


def test_a_killed_process_still_delivers_its_note_after_restart(
    tmp_path: Path, sandbox_template: Path
):
    import shutil

    data_dir = tmp_path / "sandbox"
    shutil.copytree(sandbox_template, data_dir)
    ehr_server = BackgroundServer("127.0.0.1", 0, public_host="localhost")
    app_port = _free_port()
    app_url = f"http://127.0.0.1:{app_port}"
    ehr = create_ehr_app(
        data_dir=data_dir,
        ehr_base_url=ehr_server.url,
        app_base_url=app_url,
        manifest=json.loads((PROJECT_ROOT / "launch.json").read_text()),
    )
    ehr_server.set_app(ehr)
    ehr_server.start()
    fhir_base = f"{ehr_server.url}/fhir"
    env = {
        **os.environ,
        **app_environ(tmp_path),
        "SMARTAPP_ALLOWED_ISSUERS": fhir_base,
        # Production mode refuses to start without it (the redirect URI is built from it).
        "SMARTAPP_PUBLIC_URL": app_url,
    }
    smartapp = [sys.executable, "-m", "smartapp.cli"]
    # Outside sandbox mode the store is migrated before the app starts, not by it.
    subprocess.run([*smartapp, "db", "upgrade"], env=env, check=True, capture_output=True)
    app = subprocess.Popen(
        [*smartapp, "serve", "--port", str(app_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(f"{app_url}/healthz")
        launch = requests.post(
            f"{ehr_server.url}/_sandbox/launch", json={"patient": "pt-02"}, timeout=10
        ).json()
        session = browser()
        page = session.get(launch["launch_url"], timeout=30)
        assert 'name="csrf-token"' in page.text, (page.status_code, page.url, page.text[:600])
        csrf = page.text.split('name="csrf-token" content="')[1].split('"')[0]
        headers = {"X-CSRF-Token": csrf}
        suggestion = session.get(f"{app_url}/api/suggestions", headers=headers, timeout=30).json()[
            "suggestions"
        ][0]
        session.post(
            f"{app_url}/api/suggestions/{suggestion['id']}/feedback",
            json={"action": "accept"},
            headers=headers,
            timeout=10,
        ).raise_for_status()
        requests.post(
            f"{ehr_server.url}/_sandbox/faults", json={"fail_next": 1000, "status": 503}, timeout=10
        )
        assert (
            session.post(f"{app_url}/api/note", json={}, headers=headers, timeout=60).status_code
            == 202
        )
    finally:
        app.send_signal(signal.SIGKILL)  # no clean shutdown: whatever was in memory is gone
        app.wait(timeout=10)
    try:
        requests.delete(f"{ehr_server.url}/_sandbox/faults", timeout=10)
        retried = subprocess.run(
            [*smartapp, "outbox", "retry"], env=env, capture_output=True, text=True, timeout=120
        )
        assert retried.returncode == 0, retried.stderr
        assert "notes delivered: 1" in retried.stdout
        docs = requests.get(
            f"{ehr_server.url}/_sandbox/resources/DocumentReference",
            params={"patient": "pt-02"},
            timeout=10,
        ).json()
        ours = [
            d
            for d in docs
            if any(s.get("code") == "AIAST" for s in d.get("meta", {}).get("security", []))
        ]
        assert len(ours) == 1
        assert suggestion["statements"][0]["text"] in note_text(ours[0])
    finally:
        ehr_server.stop()


def test_decisions_are_forwarded_to_the_engine_as_cds_hooks_feedback(
    tmp_path: Path, sandbox_template: Path, engine_service
):
    base, fake = engine_service
    config = tmp_path / "site.toml"
    config.write_text(
        '[suggestions]\nkinds = ["problem_summary", "medications"]\n'
        '[kinds.problem_summary]\nengine = "llm"\n'
        '[llm]\nmodel = "fake-model"\nversion = "1"\n'
        f'feedback_url = "{base}/cds-services/smartapp-drafts/feedback"\n'
    )
    environ = app_environ(
        tmp_path,
        SMARTAPP_CONFIG=str(config),
        SMARTAPP_LLM_BASE_URL=f"{base}/v1",
        SMARTAPP_LLM_MODEL="fake-model",
    )
    stack = start_stack(tmp_path, sandbox_template, environ=environ)
    try:
        launched = ehr_launch(stack)
        suggestions = launched.api("GET", "/api/suggestions").json()["suggestions"]
        from_llm = next(s for s in suggestions if s["engine"]["name"] == "llm")
        rules = next(s for s in suggestions if s["engine"]["name"] != "llm")
        launched.api(
            "POST",
            f"/api/suggestions/{from_llm['id']}/feedback",
            json={"action": "reject", "reason": "not_relevant", "comment": "old"},
        )
        launched.api("POST", f"/api/suggestions/{rules['id']}/feedback", json={"action": "accept"})
        report = stack.app.extensions["smartapp.outbox"].run_once()
        assert report.feedback_sent == 1  # only the engine with an endpoint hears of it
        [sent] = fake.feedback
        [item] = sent["feedback"]
        assert item["outcome"] == "overridden"
        assert item["overrideReason"]["reason"]["code"] == "not_relevant"
        assert item["overrideReason"]["userComment"] == "old"
        assert item["card"].replace("-", "") == from_llm["id"]
        assert stack.app.extensions["smartapp.outbox"].run_once().feedback_sent == 0
    finally:
        stack.stop()


def test_a_draft_signed_in_the_ehr_is_never_overwritten(launched: Launched):
    accept_first(launched, "problem_summary")
    first = launched.api("POST", "/api/note").json()
    # The clinician signs the draft in the EHR.
    store = launched.stack.ehr.extensions["smartapp.sandbox"].store
    rtype, rid = first["documentReference"].split("/")
    signed = dict(store.get(rtype, rid).body, docStatus="final")
    store.put(signed, patient="pt-01")
    accept_first(launched, "medications")
    second = launched.api("POST", "/api/note").json()
    assert second["documentReference"] != first["documentReference"]
    original = launched.sandbox("GET", f"/_sandbox/resources/{first['documentReference']}").json()
    assert original["docStatus"] == "final"
    assert "Medication" not in note_text(original)
    replacement = launched.sandbox(
        "GET", f"/_sandbox/resources/{second['documentReference']}"
    ).json()
    assert replacement["relatesTo"] == [
        {"code": "replaces", "target": {"reference": first["documentReference"]}}
    ]
    assert "Medication" in note_text(replacement)


def test_a_note_saved_after_the_ehr_ended_the_tokens_waits_for_the_next_launch(
    launched: Launched,
):
    accept_first(launched)
    stack = launched.stack
    # The EHR invalidates every token it issued (a sign-out, a revocation).
    stack.ehr.extensions["smartapp.sandbox"].store._execute(
        "UPDATE tokens SET access_revoked = 1, refresh_revoked = 1", ()
    )
    saved = launched.api("POST", "/api/note").json()
    assert saved["note"]["status"] == "pending"  # never "failed" while it can be sent
    assert "next time you open the app" in saved["note"]["error"]
    outbox = stack.app.extensions["smartapp.outbox"]
    assert outbox.run_once(force=True).notes_waiting == 1
    assert our_notes(launched) == []

    again = ehr_launch(stack)  # the clinician opens the app for this patient again
    [waiting] = again.api("GET", "/api/notes").json()["notes"]
    assert waiting["id"] == saved["note"]["id"] and waiting["status"] == "pending"
    assert outbox.run_once(force=True).notes_delivered == 1
    assert len(our_notes(launched)) == 1
    [delivered] = again.api("GET", "/api/notes").json()["notes"]
    assert delivered["status"] == "in_chart"


def _store_notes(stack: Any) -> list[SavedNote]:
    with stack.app.extensions["smartapp.db"].session() as s:
        return list(s.scalars(select(SavedNote)))


def _poll(condition: Any, *, seconds: float, what: str) -> None:
    """Wait for `condition()` until a deadline (a bound on a wait, never an assertion)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds:g} s")
        time.sleep(0.05)


def test_a_note_saved_while_the_ehr_is_down_goes_out_when_it_is_back_without_a_relaunch(
    tmp_path: Path, sandbox_template: Path
):
    """The EHR answers 503 for a while; the clinician moves on to another patient in the
    same browser (which ends the launch that saved the note); the worker delivers the
    note once the EHR is back, with the tokens held for it, exactly once."""
    environ = app_environ(tmp_path, SMARTAPP_OUTBOX_RETRY_SECONDS="1")
    stack = start_stack(tmp_path, sandbox_template, environ=environ)
    worker = OutboxWorker(stack.app.extensions["smartapp.outbox"], interval=0.2)
    try:
        launched = ehr_launch(stack, "pt-01")
        accept_first(launched)
        launched.sandbox("POST", "/_sandbox/faults", json={"fail_next": 10_000, "status": 503})
        saved = launched.api("POST", "/api/note")
        assert saved.status_code == 202 and saved.json()["note"]["status"] == "pending"

        # The same browser opens another patient's chart: the first launch's session goes.
        minted = launched.sandbox("POST", "/_sandbox/launch", json={"patient": "pt-02"}).json()
        assert launched.session.get(minted["launch_url"], timeout=30).status_code == 200
        with stack.app.extensions["smartapp.db"].session() as s:
            patients = set(s.scalars(select(LaunchSession.patient)))
        assert patients == {"pt-02"}

        worker.start()
        faulted = launched.sandbox("GET", "/_sandbox/stats").json()["faulted"]
        _poll(
            lambda: launched.sandbox("GET", "/_sandbox/stats").json()["faulted"] > faulted,
            seconds=30,
            what="the worker retrying while the EHR is down",
        )
        [waiting] = _store_notes(stack)
        assert waiting.status == "pending" and our_notes(launched) == []

        launched.sandbox("DELETE", "/_sandbox/faults")  # the EHR is back
        _poll(
            lambda: [n.status for n in _store_notes(stack)] == ["in_chart"],
            seconds=30,
            what="the note delivered once the EHR answers",
        )
        worker.stop()
        assert len(our_notes(launched)) == 1
        assert stack.app.extensions["smartapp.outbox"].run_once(force=True).notes_delivered == 0
        assert len(our_notes(launched)) == 1
        # Delivered: nothing of that launch's tokens is kept any more.
        with stack.app.extensions["smartapp.db"].session() as s:
            assert s.scalars(select(HeldGrant)).all() == []
    finally:
        worker.stop()
        stack.stop()
