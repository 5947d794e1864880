"""Integration: `smartapp check` against the running sandbox EHR, over real HTTP."""

from __future__ import annotations

import json

import pytest
import requests

from smartapp.cli import main
from smartapp.stack import Stack

pytestmark = pytest.mark.integration

KEY_LINES = (
    "iss-https",
    "allow-list",
    "reachable",
    "smart-configuration",
    "endpoints",
    "pkce",
    "launch-ehr",
    "launch-standalone",
    "client-auth",
    "context-ehr-patient",
    "sso-openid-connect",
    "permission-offline",
    "scopes-version",
    "capability-statement",
    "fhir-version",
    "json-format",
    "batch",
    "transaction",
    "read:Patient",
    "read:Encounter",
    "read:Medication",
    "search:Condition",
    "search:Observation",
    "search:MedicationRequest",
    "search:AllergyIntolerance",
    "search:Procedure",
    "search:Immunization",
    "search:DocumentReference",
    "include-medication",
    "write:DocumentReference",
    "write:Provenance",
)


@pytest.fixture
def check_environment(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no developer .env
    for name in (
        "SMARTAPP_CLIENT_SECRET",
        "SMARTAPP_PRIVATE_KEY",
        "SMARTAPP_LAUNCH_JSON",
        "SMARTAPP_CLIENT_ID",
        "SMARTAPP_ALLOWED_ISSUERS",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_sandbox_passes_every_key_check(stack: Stack, check_environment, capsys):
    check_environment.setenv("SMARTAPP_ALLOWED_ISSUERS", stack.fhir_base)
    requests.post(f"{stack.ehr_url}/_sandbox/stats/reset", timeout=10).raise_for_status()

    assert main(["check", "--json", stack.fhir_base]) == 0

    report = json.loads(capsys.readouterr().out)
    assert report["launchable"] is True
    statuses = {c["key"]: c["status"] for c in report["checks"]}
    assert {key: statuses.get(key) for key in KEY_LINES} == {key: "ok" for key in KEY_LINES}
    # Discovery and /metadata only: nothing that needs (or got) a token.
    stats = requests.get(f"{stack.ehr_url}/_sandbox/stats", timeout=10).json()
    assert stats["kinds"] == {"discovery": 1, "metadata": 1}


def test_the_sandbox_not_yet_allowed_is_still_checked(stack: Stack, check_environment, capsys):
    assert main(["check", stack.fhir_base]) == 0
    out = capsys.readouterr().out
    assert "warn  in SMARTAPP_ALLOWED_ISSUERS" in out
    assert "  ok    PKCE S256" in out
    assert "can be registered and launched, with 1 warning(s)" in out


def test_a_port_where_nothing_listens_fails_as_unreachable(check_environment, capsys):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The socket is closed: nothing listens there now.
    assert main(["check", "--timeout", "2", f"http://127.0.0.1:{port}/fhir"]) == 1
    assert "FAIL  server reachable" in capsys.readouterr().out
