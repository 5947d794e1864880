"""Integration: one app, two sandbox EHRs whose practitioners share ids (issue 11, finding 1).

Both EHRs are copies of the same synthetic population, so `Practitioner/dr-rene-laennec`
and `Practitioner/dr-ada-lovelace` exist at both. The app allows both issuers; only the
first EHR's Dr Laennec is an admin (the sandbox default, bound to its issuer). The same id
at the other EHR is another person: for the admin area, the audit trail, rollout and
feedback.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import requests

from smartapp.config import PROJECT_ROOT
from smartapp.sandbox.ehr import create_ehr_app
from smartapp.sandbox.server import BackgroundServer
from smartapp.stack import Stack
from tests.integration.conftest import app_environ, ehr_launch, start_stack
from tests.integration.test_governance_flow import _standalone_sign_in

pytestmark = pytest.mark.integration

TOKEN = "multi-issuer-admin-token"


@dataclass
class TwoEHRs:
    first: Stack  # the app and EHR A
    second: Stack  # the same app, seen from EHR B

    def audit(self, **params: str) -> list[dict]:
        response = requests.get(
            f"{self.first.app_url}/admin/api/audit",
            params={"limit": "500", **params},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        response.raise_for_status()
        events: list[dict] = response.json()["events"]
        return events


@pytest.fixture
def two_ehrs(tmp_path: Path, sandbox_template: Path) -> Iterator[TwoEHRs]:
    # EHR B's address must be known before the app reads its allow-list.
    second_server = BackgroundServer("127.0.0.1", 0, public_host="localhost")
    environ = app_environ(
        tmp_path,
        SMARTAPP_ADMIN_TOKEN=TOKEN,
        SMARTAPP_ALLOWED_ISSUERS=f"{second_server.url}/fhir",
    )
    first = start_stack(tmp_path, sandbox_template, environ=environ)
    data_dir = tmp_path / "sandbox-b"
    shutil.copytree(sandbox_template, data_dir)
    manifest = dict(json.loads((PROJECT_ROOT / "launch.json").read_text(encoding="utf-8")))
    manifest["client_id"] = first.settings.client_id
    second_ehr = create_ehr_app(
        data_dir=data_dir,
        ehr_base_url=second_server.url,
        app_base_url=first.app_url,
        manifest=manifest,
        population_size=24,
    )
    second_server.set_app(second_ehr)
    second_server.start()
    try:
        assert set(first.settings.allowed_issuers) == {first.fhir_base, f"{second_server.url}/fhir"}
        yield TwoEHRs(first=first, second=replace(first, ehr_server=second_server, ehr=second_ehr))
    finally:
        second_server.stop()
        first.stop()


def _who(stack: Stack, user: str) -> str:
    return f"{stack.fhir_base}|Practitioner/{user}"


def test_the_same_admin_id_at_the_other_ehr_is_not_an_admin(two_ehrs: TwoEHRs):
    a, b = two_ehrs.first, two_ehrs.second
    assert _standalone_sign_in(a, "dr-rene-laennec").url == f"{a.app_url}/admin"
    refused = _standalone_sign_in(b, "dr-rene-laennec")
    assert refused.status_code == 403
    # Nothing of the admin area answers B's Dr Laennec, and the trail names who was who.
    events = two_ehrs.audit(action="admin.")
    signed_in = {e["actor"] for e in events if e["action"] == "admin.signin"}
    denied = {e["actor"] for e in events if e["action"] == "admin.denied"}
    assert signed_in == {_who(a, "dr-rene-laennec"), _who(b, "dr-rene-laennec")}
    assert denied == {_who(b, "dr-rene-laennec")}


def test_clinicians_sharing_an_id_are_two_people_for_rollout_feedback_and_audit(
    two_ehrs: TwoEHRs,
):
    a, b = two_ehrs.first, two_ehrs.second
    # Care gaps reach nobody at EHR A yet; EHR B has no rule.
    rule = requests.post(
        f"{a.app_url}/admin/api/rollout",
        json={"site": a.fhir_base, "kind": "care_gaps", "enabled": True, "percentage": 0},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert rule.ok, rule.text
    at_a = ehr_launch(a, "pt-01")
    at_b = ehr_launch(b, "pt-01")  # the same patient id and the same clinician id, at B
    from_a = at_a.api("GET", "/api/suggestions").json()["suggestions"]
    from_b = at_b.api("GET", "/api/suggestions").json()["suggestions"]
    assert "care_gaps" not in {s["kind"] for s in from_a}
    assert "care_gaps" in {s["kind"] for s in from_b}

    # A's decision is A's: B's clinician sees her own suggestions, undecided.
    first = from_a[0]
    accepted = at_a.api(
        "POST", f"/api/suggestions/{first['id']}/feedback", json={"action": "accept"}
    )
    assert accepted.ok, accepted.text
    again_b = at_b.api("GET", "/api/suggestions").json()["suggestions"]
    assert all(s["decision"] is None for s in again_b)
    assert first["id"] not in {s["id"] for s in again_b}

    # Every event names the clinician with her own EHR, and at its own site.
    events = two_ehrs.audit(patient="pt-01")
    actors = {(e["actor"], e["site"]) for e in events}
    assert actors == {
        (_who(a, "dr-ada-lovelace"), a.fhir_base),
        (_who(b, "dr-ada-lovelace"), b.fhir_base),
    }
    for action in ("launch", "chart.read", "suggestions.view"):
        assert {e["actor"] for e in events if e["action"] == action} == {
            _who(a, "dr-ada-lovelace"),
            _who(b, "dr-ada-lovelace"),
        }
