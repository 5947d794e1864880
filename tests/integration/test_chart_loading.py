"""Integration: the chart snapshot against the sandbox EHR over real HTTP."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
import requests

from smartapp.fhir.cache import SnapshotCache
from smartapp.fhir.chart import medication_history_since
from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.smart.crypto import hash_secret
from smartapp.stack import Stack
from tests.conftest import in_note
from tests.integration.conftest import Launched, ehr_launch

pytestmark = pytest.mark.integration


def cached_snapshot(launched: Launched) -> ChartSnapshot:
    cookie = launched.session.cookies.get("smartapp_session")
    cache = SnapshotCache(launched.stack.app.extensions["smartapp.db"], ttl_seconds=3600)
    snapshot = cache.get(hash_secret(cookie))
    assert snapshot is not None
    return snapshot


def sandbox_ids(stack: Stack, resource_type: str, patient: str) -> set[str]:
    found = requests.get(
        f"{stack.ehr_url}/_sandbox/resources/{resource_type}",
        params={"patient": patient},
        timeout=30,
    ).json()
    return {r["id"] for r in found}


def expected_ids(stack: Stack, resource_type: str, patient: str) -> set[str]:
    found = requests.get(
        f"{stack.ehr_url}/_sandbox/resources/{resource_type}",
        params={"patient": patient},
        timeout=30,
    ).json()
    if resource_type == "MedicationRequest":
        # Current orders, and those stopped or completed within the window.
        since = medication_history_since(datetime.now(UTC).date()).isoformat()
        return {
            r["id"]
            for r in found
            if r.get("status") == "active"
            or (r.get("status") in ("stopped", "completed") and r.get("authoredOn", "") >= since)
        }
    return {r["id"] for r in found}


def test_every_sandbox_patients_snapshot_matches_what_the_sandbox_holds(stack: Stack):
    patients = [
        p["id"]
        for p in requests.get(f"{stack.ehr_url}/_sandbox/resources/Patient", timeout=30).json()
    ]
    assert len(patients) >= 20
    for patient in patients:
        launched = ehr_launch(stack, patient)
        assert launched.api("GET", "/api/suggestions").status_code == 200
        snapshot = cached_snapshot(launched)
        assert snapshot.patient_id == patient
        assert not [p for p in snapshot.problems if p.code != "truncated"], (
            patient,
            snapshot.problems,
        )
        for rtype in (
            "Condition",
            "Observation",
            "MedicationRequest",
            "AllergyIntolerance",
            "Procedure",
            "Immunization",
        ):
            got = {r["id"] for r in snapshot.of_type(rtype)}
            assert got == expected_ids(stack, rtype, patient), (patient, rtype)
        # Recent notes: the ten newest, metadata only.
        docs = snapshot.of_type("DocumentReference")
        assert {d["id"] for d in docs} <= sandbox_ids(stack, "DocumentReference", patient)
        assert all(
            "data" not in c.get("attachment", {}) for d in docs for c in d.get("content", [])
        )
        # Every medication a request points at is in the snapshot (or contained in it).
        for request in snapshot.of_type("MedicationRequest"):
            ref = request.get("medicationReference", {}).get("reference")
            if ref:
                assert snapshot.resolve(ref, within=request) is not None, (patient, ref)


def test_the_large_chart_loads_whole_in_few_requests(stack: Stack):
    launched = ehr_launch(stack, "bench-large")
    launched.api("GET", "/api/suggestions")
    snapshot = cached_snapshot(launched)
    assert (
        len(snapshot.of_type("Observation"))
        == len(sandbox_ids(stack, "Observation", "bench-large"))
        >= 300
    )
    assert len(snapshot.of_type("Condition")) >= 20
    # Since the Observation lists are read from both ends (their oldest-first pages in a
    # batch of their own, in the same round), one request more than the rounds.
    assert snapshot.request_count <= 4


def test_two_failed_requests_cost_a_retry_not_the_chart(launched: Launched):
    launched.sandbox("POST", "/_sandbox/faults", json={"fail_next": 2, "status": 503})
    response = launched.api("GET", "/api/suggestions")
    assert response.status_code == 200, response.text
    assert response.json()["suggestions"]
    assert launched.sandbox("GET", "/_sandbox/stats").json()["faulted"] == 2


def test_the_ehr_down_gives_a_clear_message_not_a_stack_trace(stack: Stack):
    launched = ehr_launch(stack)
    stack.ehr_server.stop()
    response = launched.api("GET", "/api/suggestions")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "ehr_unavailable"
    assert "EHR" in error["message"]
    assert "Traceback" not in response.text


def test_refresh_reads_the_chart_again(launched: Launched):
    first = launched.api("GET", "/api/suggestions").json()
    again = launched.api("GET", "/api/suggestions").json()
    assert [s["id"] for s in again["suggestions"]] == [s["id"] for s in first["suggestions"]]
    assert again["chart"]["fetchedAt"] == first["chart"]["fetchedAt"]  # served from the cache
    accepted = first["suggestions"][0]
    launched.api("POST", f"/api/suggestions/{accepted['id']}/feedback", json={"action": "accept"})
    refreshed = launched.api("POST", "/api/refresh").json()
    assert refreshed["chart"]["fetchedAt"] != first["chart"]["fetchedAt"]
    # The chart did not change, so neither did the suggestions: same ids, decision kept.
    assert [s["id"] for s in refreshed["suggestions"]] == [s["id"] for s in first["suggestions"]]
    assert refreshed["suggestions"][0]["decision"]["action"] == "accept"
    saved = launched.api("POST", "/api/note")
    assert saved.status_code == 201
    doc = launched.sandbox("GET", f"/_sandbox/resources/{saved.json()['documentReference']}").json()
    note = base64.b64decode(doc["content"][0]["attachment"]["data"]).decode()
    assert in_note(accepted["statements"][0]["text"], note)
