"""Integration: a full EHR launch against the sandbox over real HTTP, through to the note."""

from __future__ import annotations

import base64
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import requests

from smartapp.smart.crypto import TokenCipher
from smartapp.smart.models import LaunchSession
from tests.conftest import in_note
from tests.integration.conftest import Launched, browser, ehr_launch

pytestmark = pytest.mark.integration


def test_ehr_launch_suggest_accept_and_the_note_lands_with_provenance(launched: Launched):
    context = launched.api("GET", "/api/context").json()
    assert context["patient"]["id"] == "pt-01"
    assert context["patient"]["name"] == "Amara Okafor"
    assert context["fhirUser"] == "Practitioner/dr-ada-lovelace"
    assert context["needPatientBanner"] is False  # the EHR shows its own banner
    assert context["csrfToken"] == launched.csrf

    suggestions = launched.api("GET", "/api/suggestions").json()["suggestions"]
    kinds = [s["kind"] for s in suggestions]
    assert "problem_summary" in kinds and "medications" in kinds
    for suggestion in suggestions:
        assert suggestion["citations"], f"{suggestion['kind']} cites its sources"
        assert {"name", "version"} <= set(suggestion["engine"])
    problems = next(s for s in suggestions if s["kind"] == "problem_summary")
    assert all(
        c["reference"].split("/")[0] in {"Condition", "Observation"} for c in problems["citations"]
    )

    recorded = launched.api(
        "POST", f"/api/suggestions/{problems['id']}/feedback", json={"action": "accept"}
    )
    assert recorded.json() == {"status": "recorded"}

    saved = launched.api("POST", "/api/note", json={})
    assert saved.status_code == 201, saved.text
    body = saved.json()
    doc_id = body["documentReference"].split("/")[1]
    prov_id = body["provenance"].split("/")[1]

    doc = launched.sandbox("GET", f"/_sandbox/resources/DocumentReference/{doc_id}").json()
    assert doc["subject"]["reference"] == "Patient/pt-01"
    assert doc["docStatus"] == "preliminary"
    assert doc["author"] == [{"reference": "Practitioner/dr-ada-lovelace"}]
    note = base64.b64decode(doc["content"][0]["attachment"]["data"]).decode()
    # A clinical note: the statements under a section heading, no card title or engine label.
    assert note.startswith("Subjective\n") and problems["title"] not in note
    assert all(in_note(st["text"], note) for st in problems["statements"])

    provenance = launched.sandbox("GET", f"/_sandbox/resources/Provenance/{prov_id}").json()
    assert provenance["target"] == [{"reference": f"DocumentReference/{doc_id}"}]
    agents = {a["who"]["reference"] for a in provenance["agent"]}
    assert "Practitioner/dr-ada-lovelace" in agents
    assert any(ref.startswith("#") for ref in agents), "the engine is a (contained) Device agent"


def test_edited_text_is_what_lands_in_the_chart(launched: Launched):
    suggestions = launched.api("GET", "/api/suggestions").json()["suggestions"]
    meds = next(s for s in suggestions if s["kind"] == "medications")
    launched.api(
        "POST",
        f"/api/suggestions/{meds['id']}/feedback",
        json={"action": "edit", "text": "Losartan only."},
    )
    saved = launched.api("POST", "/api/note").json()
    doc = launched.sandbox("GET", f"/_sandbox/resources/{saved['documentReference']}").json()
    assert "Losartan only." in base64.b64decode(doc["content"][0]["attachment"]["data"]).decode()

    # The note's make-up is kept for the metrics: one edit, its characters counted as edited.
    from smartapp.notes.models import SavedNote

    with launched.stack.app.extensions["smartapp.db"].session() as s:
        [note] = s.query(SavedNote).all()
        assert (note.edits, note.chars_edited, note.chars_accepted) == (1, len("Losartan only."), 0)
        assert note.launched_at is not None and note.launched_at <= note.created_at


class _Recorder(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        _Recorder.hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_unknown_issuer_is_refused_and_nothing_is_sent_to_it(stack):
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        rogue = f"http://127.0.0.1:{server.server_port}/fhir"
        response = browser().get(
            f"{stack.app_url}/launch", params={"iss": rogue, "launch": "x"}, timeout=10
        )
        assert response.status_code == 400
        assert "not registered" in response.text or "not allowed" in response.text.lower()
        assert _Recorder.hits == []
    finally:
        server.shutdown()
        server.server_close()


def test_forged_state_is_refused(stack):
    session = browser()
    minted = requests.post(
        f"{stack.ehr_url}/_sandbox/launch", json={"patient": "pt-02"}, timeout=10
    ).json()
    started = session.get(minted["launch_url"], allow_redirects=False, timeout=10)
    assert started.status_code in (302, 303)
    forged = session.get(
        f"{stack.app_url}/callback", params={"code": "abc", "state": "forged-state"}, timeout=10
    )
    assert forged.status_code == 400
    assert "relaunch" in forged.text.lower() or "open the app again" in forged.text.lower()


def test_state_changing_requests_need_the_csrf_token(launched: Launched):
    missing = launched.session.post(f"{launched.stack.app_url}/api/note", json={}, timeout=10)
    assert missing.status_code == 403
    assert missing.json()["error"]["code"] == "csrf_failed"
    wrong = launched.session.post(
        f"{launched.stack.app_url}/api/note", json={}, headers={"X-CSRF-Token": "nope"}, timeout=10
    )
    assert wrong.status_code in (401, 403)


def test_no_token_reaches_the_browser(launched: Launched):
    responses_seen = [
        launched.page,
        launched.api("GET", "/api/context"),
        launched.api("GET", "/api/suggestions"),
        launched.api("GET", "/static/js/sidebar.js"),
    ]
    settings = launched.stack.settings
    cipher = TokenCipher(settings.secret_key)
    db = launched.stack.app.extensions["smartapp.db"]
    with db.session() as s:
        row = s.query(LaunchSession).one()
        secrets = [cipher.decrypt(row.access_token_enc)]
        if row.refresh_token_enc:
            secrets.append(cipher.decrypt(row.refresh_token_enc))
    cookies = " ".join(c.value for c in launched.session.cookies)
    for secret in secrets:
        assert len(secret) > 10
        assert secret not in cookies
        for response in responses_seen:
            assert secret not in response.text
            assert secret not in str(response.headers)


def test_a_second_launch_in_the_same_browser_does_not_mix_patients(stack):
    first = ehr_launch(stack, "pt-01")
    second_page = first.session.get(
        requests.post(
            f"{stack.ehr_url}/_sandbox/launch", json={"patient": "pt-02"}, timeout=10
        ).json()["launch_url"],
        timeout=10,
    )
    assert second_page.status_code == 200
    # The first panel still holds its own CSRF token: it must not be served pt-02's chart.
    stale = first.session.get(
        f"{stack.app_url}/api/context", headers={"X-CSRF-Token": first.csrf}, timeout=10
    )
    assert stale.status_code == 401
    assert "earlier launch" in stale.json()["error"]["message"]


def test_standalone_launch_asks_the_ehr_for_a_patient_and_shows_the_banner(stack):
    from html.parser import HTMLParser

    session = browser()
    page = session.get(f"{stack.app_url}/launch", params={"iss": stack.fhir_base}, timeout=30)
    assert page.url.startswith(f"{stack.ehr_url}/auth/authorize")
    fields: dict[str, str] = {}
    action = {"url": page.url}

    class Form(HTMLParser):
        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "form" and a.get("action"):
                action["url"] = requests.compat.urljoin(page.url, a["action"])
            if tag == "input" and a.get("type") == "hidden":
                fields[a["name"]] = a.get("value", "")

    Form().feed(page.text)
    assert "launch/patient" in fields["scope"]
    fields.update(user="np-mary-seacole", patient="pt-04", decision="approve")
    landed = session.post(action["url"], data=fields, timeout=30)
    assert landed.url == f"{stack.app_url}/"
    csrf = landed.text.split('name="csrf-token" content="')[1].split('"')[0]
    context = session.get(
        f"{stack.app_url}/api/context", headers={"X-CSRF-Token": csrf}, timeout=30
    ).json()
    assert context["patient"]["id"] == "pt-04"
    assert context["needPatientBanner"] is True  # no EHR banner around a standalone app
    assert context["fhirUser"] == "Practitioner/np-mary-seacole"


def test_opening_the_app_without_a_launch_explains_what_to_do(stack):
    page = browser().get(f"{stack.app_url}/", timeout=10)
    assert page.status_code == 401
    assert "Open the app again from the patient" in page.text
    bare = browser().get(f"{stack.app_url}/launch", timeout=10)
    assert bare.status_code == 400
    assert "EHR" in bare.text


def test_no_token_or_patient_name_in_any_log_line(stack, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    launched = ehr_launch(stack, "pt-01")
    suggestions = launched.api("GET", "/api/suggestions").json()["suggestions"]
    first = suggestions[0]["id"]
    launched.api("POST", f"/api/suggestions/{first}/feedback", json={"action": "accept"})
    launched.sandbox("POST", "/_sandbox/faults", json={"fail_next": 1, "status": 503})
    launched.api("POST", "/api/refresh")
    launched.api("POST", "/api/note")
    cipher = TokenCipher(stack.settings.secret_key)
    with stack.app.extensions["smartapp.db"].session() as s:
        row = s.query(LaunchSession).one()
        secrets = [cipher.decrypt(row.access_token_enc)]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged, "the flow logs something"
    for secret in (*secrets, "Amara", "Okafor", launched.csrf):
        assert secret not in logged


@pytest.mark.parametrize("auth", ["private_key_jwt", "client_secret_basic"])
def test_a_confidential_client_launches_against_the_sandbox(tmp_path, sandbox_template, auth):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.integration.conftest import app_environ, start_stack

    extra: dict[str, str] = {}
    if auth == "private_key_jwt":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = tmp_path / "app-key.pem"
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        extra["SMARTAPP_PRIVATE_KEY"] = str(pem)
    else:
        extra["SMARTAPP_CLIENT_SECRET"] = "a-shared-secret-for-the-sandbox"
    stack = start_stack(tmp_path, sandbox_template, environ=app_environ(tmp_path, **extra))
    try:
        launched = ehr_launch(stack, "pt-02")
        assert launched.api("GET", "/api/context").json()["patient"]["id"] == "pt-02"
        jwks = requests.get(f"{stack.app_url}/.well-known/jwks.json", timeout=10).json()
        assert len(jwks["keys"]) == (1 if auth == "private_key_jwt" else 0)
        assert all("d" not in k for k in jwks["keys"]), "only the public half is served"
    finally:
        stack.stop()
