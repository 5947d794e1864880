"""Integration: governance acting on the clinician's sidebar, and the admin sign-in through the EHR.

Kill switches and rollout rules set through the admin API take effect on the clinician's
next request; every PHI access is in the audit log; an admin signs in with the EHR's own
login (a standalone SMART launch) and a clinician who is not an admin is refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from fhir.resources.R4B import get_fhir_model_class

from smartapp.stack import Stack
from tests.integration.conftest import app_environ, browser, ehr_launch, start_stack

pytestmark = pytest.mark.integration

TOKEN = "integration-admin-token"
ADMIN = "Practitioner/dr-rene-laennec"


@pytest.fixture
def governed(tmp_path: Path, sandbox_template: Path):
    environ = app_environ(tmp_path, SMARTAPP_ADMIN_TOKEN=TOKEN, SMARTAPP_ADMIN_USERS=ADMIN)
    stack = start_stack(tmp_path, sandbox_template, environ=environ)
    yield stack
    stack.stop()


def admin_api(stack: Stack, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    return requests.request(method, f"{stack.app_url}{path}", headers=headers, timeout=30, **kwargs)


def kinds_of(payload: dict) -> set[str]:
    return {s["kind"] for s in payload["suggestions"]}


def test_a_kill_switch_takes_effect_on_the_next_request(governed: Stack):
    launched = ehr_launch(governed)
    before = launched.api("GET", "/api/suggestions").json()
    problems = next(s for s in before["suggestions"] if s["kind"] == "problem_summary")
    launched.api("POST", f"/api/suggestions/{problems['id']}/feedback", json={"action": "accept"})
    assert "medications" in kinds_of(before)
    switched = admin_api(
        governed,
        "POST",
        "/admin/api/kill-switches",
        json={"scope": "kind", "target": "medications", "engaged": True, "reason": "review"},
    )
    assert switched.ok, switched.text
    after = launched.api("GET", "/api/suggestions").json()
    assert "medications" not in kinds_of(after)
    assert {"kind": "medications"}.items() <= after["notEnabled"][0].items()
    assert "switched off" in after["notEnabled"][0]["reason"]
    # The other kinds keep their suggestions (same ids, so their decisions still show).
    others = [s["id"] for s in before["suggestions"] if s["kind"] != "medications"]
    assert [s["id"] for s in after["suggestions"]] == others
    decided = next(s for s in after["suggestions"] if s["id"] == problems["id"])
    assert decided["decision"]["action"] == "accept"
    admin_api(
        governed,
        "POST",
        "/admin/api/kill-switches",
        json={"scope": "kind", "target": "medications", "engaged": False},
    )
    restored = launched.api("GET", "/api/suggestions").json()
    assert [s["id"] for s in restored["suggestions"]] == [s["id"] for s in before["suggestions"]]


def test_a_rollout_rule_keeps_a_kind_from_clinicians_outside_it(governed: Stack):
    rule = admin_api(
        governed,
        "POST",
        "/admin/api/rollout",
        json={
            "site": governed.fhir_base,
            "kind": "care_gaps",
            "enabled": True,
            "percentage": 0,
            "reason": "not yet",
        },
    )
    assert rule.ok, rule.text
    launched = ehr_launch(governed, "pt-01")
    payload = launched.api("GET", "/api/suggestions").json()
    assert "care_gaps" not in kinds_of(payload)
    [refused] = [n for n in payload["notEnabled"] if n["kind"] == "care_gaps"]
    assert "not enabled" in refused["reason"].lower()


def test_every_phi_access_is_in_the_audit_log_and_exports_as_fhir(governed: Stack):
    launched = ehr_launch(governed, "pt-03")
    first = launched.api("GET", "/api/suggestions").json()["suggestions"][0]
    launched.api("POST", f"/api/suggestions/{first['id']}/feedback", json={"action": "accept"})
    assert launched.api("POST", "/api/note").status_code == 201
    events = admin_api(governed, "GET", "/admin/api/audit", params={"patient": "pt-03"}).json()
    actions = [e["action"] for e in events["events"]]
    for action in ("launch", "chart.read", "suggestions.view", "note.write"):
        assert action in actions, actions
    who = f"{governed.fhir_base}|Practitioner/dr-ada-lovelace"  # bound to its EHR
    assert all(e["actor"] == who for e in events["events"])
    bundle = admin_api(
        governed, "GET", "/admin/api/audit", params={"patient": "pt-03", "format": "fhir"}
    ).json()
    get_fhir_model_class("Bundle").model_validate(bundle)
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} == {"AuditEvent"}
    # No token anywhere in the trail.
    assert "access_token" not in str(events)


def _standalone_sign_in(stack: Stack, user: str) -> requests.Response:
    session = browser()
    page = session.get(f"{stack.app_url}/admin/signin", params={"iss": stack.fhir_base}, timeout=30)
    # The EHR's sign-in page: pick the user, approve (a plain HTML form, as a person would).
    assert "<form" in page.text, page.text[:300]
    from html.parser import HTMLParser

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
    fields.update(user=user, decision="approve")
    return session.post(action["url"], data=fields, timeout=30)


def test_an_admin_signs_in_through_the_ehr_and_sees_the_dashboard(governed: Stack):
    landed = _standalone_sign_in(governed, "dr-rene-laennec")
    assert landed.status_code == 200, landed.text[:300]
    assert landed.url == f"{governed.app_url}/admin"
    assert "Are the suggestions used?" in landed.text
    assert "dr-rene-laennec" in landed.text or "Laennec" in landed.text


def test_a_clinician_who_is_not_an_admin_is_refused(governed: Stack):
    landed = _standalone_sign_in(governed, "dr-ada-lovelace")
    assert landed.status_code == 403


def test_an_engine_kill_switch_falls_back_to_the_rules_visibly(
    tmp_path: Path, sandbox_template: Path, engine_service
):
    base, _fake = engine_service
    config = tmp_path / "site.toml"
    config.write_text(
        '[suggestions]\nkinds = ["problem_summary", "medications"]\n'
        '[kinds.problem_summary]\nengine = "llm"\n[llm]\nmodel = "fake-model"\nversion = "1"\n'
    )
    environ = app_environ(
        tmp_path,
        SMARTAPP_ADMIN_TOKEN=TOKEN,
        SMARTAPP_CONFIG=str(config),
        SMARTAPP_LLM_BASE_URL=f"{base}/v1",
        SMARTAPP_LLM_MODEL="fake-model",
    )
    stack = start_stack(tmp_path, sandbox_template, environ=environ)
    try:
        launched = ehr_launch(stack)
        before = launched.api("GET", "/api/suggestions").json()["suggestions"]
        assert next(s for s in before if s["kind"] == "problem_summary")["engine"]["name"] == "llm"
        admin_api(
            stack,
            "POST",
            "/admin/api/kill-switches",
            json={"scope": "engine", "target": "llm", "engaged": True, "reason": "incident"},
        ).raise_for_status()
        after = launched.api("GET", "/api/suggestions").json()["suggestions"]
        summary = next(s for s in after if s["kind"] == "problem_summary")
        assert summary["engine"]["name"] == "builtin-rules"
        assert "switched off" in summary["engine"]["fallbackReason"]
    finally:
        stack.stop()
