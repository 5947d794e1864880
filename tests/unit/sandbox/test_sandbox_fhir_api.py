"""Unit: the sandbox's FHIR R4 API — tokens, scopes, compartments, paging, bundles, writes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sandbox_helpers import FHIR_BASE, SmartClient, bearer, make_ehr

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sandbox"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


@pytest.fixture
def token(smart: SmartClient) -> dict[str, Any]:
    return smart.token("pt-01")


def get(client, url: str, token: dict[str, Any], **params: Any) -> Any:
    path = url.removeprefix(FHIR_BASE.removesuffix("/fhir")) if url.startswith("http") else url
    return client.get(path, query_string=params or None, headers=bearer(token))


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [
        e["resource"]["id"]
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode") == mode
    ]


def note(
    patient: str = "pt-01", text: str = "Assessment: stable.", identifier: str | None = None
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": "current",
        "docStatus": "preliminary",
        "type": {
            "coding": [
                {"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}
            ]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                        "code": "clinical-note",
                    }
                ]
            }
        ],
        "subject": {"reference": f"Patient/{patient}"},
        "author": [{"reference": "Practitioner/dr-ada-lovelace"}],
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "data": base64.b64encode(text.encode()).decode(),
                }
            }
        ],
    }
    if identifier:
        resource["identifier"] = [{"system": "urn:ietf:rfc:3986", "value": identifier}]
    return resource


# -- authentication ---------------------------------------------------------------------
def test_api_requires_a_bearer_token(client):
    response = client.get("/fhir/Patient/pt-01")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_unknown_token_is_invalid_token(client):
    response = client.get("/fhir/Patient/pt-01", headers=bearer("not-a-token"))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_metadata_needs_no_token(client):
    assert client.get("/fhir/metadata").status_code == 200


# -- read and compartment ---------------------------------------------------------------
def test_read_own_patient(client, token):
    response = get(client, "/fhir/Patient/pt-01", token)
    assert response.status_code == 200
    assert response.mimetype == "application/fhir+json"
    assert response.headers["ETag"] == 'W/"1"'
    assert response.get_json()["id"] == "pt-01"


def test_read_other_patient_is_forbidden(client, token):
    response = get(client, "/fhir/Patient/pt-02", token)
    assert response.status_code == 403
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "forbidden"


def test_read_other_patients_observation_is_forbidden(client, token):
    response = get(client, "/fhir/Observation/pt-02-obs-001", token)
    assert response.status_code == 403


def test_search_for_other_patient_is_forbidden(client, token):
    assert get(client, "/fhir/Condition", token, patient="pt-02").status_code == 403
    assert get(client, "/fhir/Condition", token, subject="Patient/pt-02").status_code == 403


def test_search_without_patient_is_limited_to_the_compartment(client, token):
    bundle = get(client, "/fhir/Condition", token, _count=200).get_json()
    assert bundle["total"] > 0
    assert all(e["resource"]["subject"]["reference"] == "Patient/pt-01" for e in bundle["entry"])


def test_shared_resources_are_readable_with_scope(client, token):
    bundle = get(
        client,
        "/fhir/MedicationRequest",
        token,
        patient="pt-01",
        _count=200,
        _include="MedicationRequest:medication",
    ).get_json()
    referenced = {
        e["resource"]["medicationReference"]["reference"]
        for e in bundle["entry"]
        if e["search"]["mode"] == "match"
        and e["resource"]
        .get("medicationReference", {})
        .get("reference", "")
        .startswith("Medication/")
    }
    included = {f"Medication/{i}" for i in ids(bundle, "include")}
    assert referenced and referenced == included


def test_fhir_user_scope_reads_only_the_signed_in_practitioner(client, token):
    own = get(client, "/fhir/Practitioner/dr-ada-lovelace", token)
    assert own.status_code == 200
    assert own.get_json()["name"][0]["family"] == "Lovelace"
    assert get(client, "/fhir/Practitioner/dr-rene-laennec", token).status_code == 403


def test_scope_is_enforced_per_type(tmp_path: Path, populated_dir: Path):
    narrow = {
        "client_id": "narrow",
        "redirect_uris": ["/callback"],
        "scope": "launch patient/Patient.rs",
        "token_endpoint_auth_method": "none",
    }
    app = make_ehr(tmp_path / "ehr", populated_dir, extra_clients=[narrow])
    client = app.test_client()
    token = SmartClient(client, client_id="narrow", scope="launch patient/Patient.rs").token()
    assert get(client, "/fhir/Patient/pt-01", token).status_code == 200
    denied = get(client, "/fhir/Observation", token, patient="pt-01")
    assert denied.status_code == 403
    assert "scopes" in denied.get_json()["issue"][0]["diagnostics"]


def test_v1_read_scope_reads_but_cannot_write(tmp_path: Path, populated_dir: Path):
    v1 = {
        "client_id": "v1-app",
        "redirect_uris": ["/callback"],
        "scope": "launch patient/*.read",
        "token_endpoint_auth_method": "none",
    }
    app = make_ehr(tmp_path / "ehr", populated_dir, extra_clients=[v1])
    client = app.test_client()
    token = SmartClient(client, client_id="v1-app", scope="launch patient/*.read").token()
    assert get(client, "/fhir/Observation", token, patient="pt-01").status_code == 200
    created = client.post("/fhir/DocumentReference", json=note(), headers=bearer(token))
    assert created.status_code == 403


def test_granular_scope_filters_by_category(tmp_path: Path, populated_dir: Path):
    scope = "launch patient/Observation.rs?category=vital-signs"
    granular = {
        "client_id": "vitals-only",
        "redirect_uris": ["/callback"],
        "scope": scope,
        "token_endpoint_auth_method": "none",
    }
    app = make_ehr(tmp_path / "ehr", populated_dir, extra_clients=[granular])
    client = app.test_client()
    token = SmartClient(client, client_id="vitals-only", scope=scope).token()
    bundle = get(client, "/fhir/Observation", token, patient="pt-01", _count=200).get_json()
    categories = {
        c["code"]
        for e in bundle["entry"]
        for cat in e["resource"]["category"]
        for c in cat["coding"]
    }
    assert categories == {"vital-signs"}


# -- search and paging ------------------------------------------------------------------
def test_default_page_is_small_with_absolute_next_links(client, token):
    first = get(client, "/fhir/Observation", token, patient="pt-01").get_json()
    assert first["type"] == "searchset"
    assert first["total"] > 30
    assert len(ids(first)) == 10
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert links["self"].startswith(f"{FHIR_BASE}/Observation?")
    assert links["next"].startswith(f"{FHIR_BASE}/Observation?")

    seen: list[str] = []
    page = first
    while True:
        seen += ids(page)
        nxt = {link["relation"]: link["url"] for link in page["link"]}.get("next")
        if not nxt:
            break
        response = get(client, nxt, token)
        assert response.status_code == 200
        page = response.get_json()
    assert len(seen) == first["total"] == len(set(seen))


def test_count_is_capped_at_200(client, smart: SmartClient):
    token = smart.token("bench-large")
    bundle = get(client, "/fhir/Observation", token, patient="bench-large", _count=1000).get_json()
    assert bundle["total"] >= 300
    assert len(ids(bundle)) == 200
    assert parse_qs(
        urlsplit(next(link["url"] for link in bundle["link"] if link["relation"] == "next")).query
    )["_count"] == ["200"]


def test_sort_by_date_descending(client, token):
    bundle = get(
        client, "/fhir/Observation", token, patient="pt-01", _sort="-date", _count=50
    ).get_json()
    dates = [e["resource"]["effectiveDateTime"] for e in bundle["entry"]]
    assert dates == sorted(dates, reverse=True)


def test_search_by_category_code_and_date(client, token):
    vitals = get(
        client, "/fhir/Observation", token, patient="pt-01", category="vital-signs", _count=200
    ).get_json()
    assert vitals["total"] > 0
    assert all(
        any(c["code"] == "vital-signs" for cat in e["resource"]["category"] for c in cat["coding"])
        for e in vitals["entry"]
    )
    hba1c = get(
        client,
        "/fhir/Observation",
        token,
        patient="pt-01",
        code="http://loinc.org|4548-4",
        _count=200,
    ).get_json()
    assert hba1c["total"] >= 3  # a history, not one value
    recent = get(
        client,
        "/fhir/Observation",
        token,
        patient="pt-01",
        code="http://loinc.org|4548-4",
        date="ge2026-06-01",
    ).get_json()
    assert 0 < recent["total"] < hba1c["total"]


def test_condition_clinical_status_filter(client, smart: SmartClient):
    token = smart.token("bench-large")
    active = get(
        client,
        "/fhir/Condition",
        token,
        patient="bench-large",
        **{"clinical-status": "active", "_count": 200},
    ).get_json()
    everything = get(client, "/fhir/Condition", token, patient="bench-large", _count=200).get_json()
    assert active["total"] >= 20
    assert active["total"] < everything["total"]


def test_unknown_search_parameter_is_ignored_with_a_warning_or_rejected_when_strict(client, token):
    lenient = get(client, "/fhir/Condition", token, patient="pt-01", colour="blue").get_json()
    outcomes = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert "colour" in outcomes[0]["resource"]["issue"][0]["diagnostics"]
    strict = client.get(
        "/fhir/Condition",
        query_string={"patient": "pt-01", "colour": "x"},
        headers={**bearer(token), "Prefer": "handling=strict"},
    )
    assert strict.status_code == 400


def test_unknown_type_is_404_and_delete_is_405(client, token):
    assert get(client, "/fhir/Spaceship", token).status_code == 404
    response = client.delete("/fhir/Observation/pt-01-obs-001", headers=bearer(token))
    assert response.status_code == 405
    assert response.get_json()["resourceType"] == "OperationOutcome"


# -- batch ------------------------------------------------------------------------------
def test_batch_runs_searches_and_reads_in_one_request(client, token, ehr):
    controls = ehr.extensions["smartapp.sandbox"].controls
    controls.reset_stats()
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Patient/pt-01"}},
            {"request": {"method": "GET", "url": "Condition?patient=pt-01&_count=200"}},
            {"request": {"method": "GET", "url": f"{FHIR_BASE}/Observation?patient=pt-01"}},
            {"request": {"method": "GET", "url": "Observation?patient=pt-02"}},
        ],
    }
    response = client.post("/fhir", json=batch, headers=bearer(token))
    assert response.status_code == 200
    result = response.get_json()
    assert result["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses[:3] == ["200 OK"] * 3
    assert statuses[3].startswith("403")
    assert result["entry"][0]["resource"]["id"] == "pt-01"
    assert result["entry"][1]["resource"]["type"] == "searchset"
    observations = result["entry"][2]["resource"]
    assert any(link["relation"] == "next" for link in observations["link"])
    assert controls.stats()["kinds"] == {"batch": 1}


# -- transaction ------------------------------------------------------------------------
def _note_transaction(identifier: str) -> dict[str, Any]:
    document_urn = "urn:uuid:3f8e6a0e-5b1c-4a4e-9a55-0c1b7f0d2a11"
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:9c1d2e3f-0000-4a4e-9a55-0c1b7f0d2a12",
                "resource": {
                    "resourceType": "Provenance",
                    "target": [{"reference": document_urn}],
                    "recorded": "2026-10-20T10:00:00Z",
                    "agent": [
                        {
                            "type": {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                        "code": "author",
                                    }
                                ]
                            },
                            "who": {"reference": "Practitioner/dr-ada-lovelace"},
                        }
                    ],
                },
                "request": {
                    "method": "POST",
                    "url": "Provenance",
                    "ifNoneExist": f"target={document_urn}",
                },
            },
            {
                "fullUrl": document_urn,
                "resource": note(identifier=identifier),
                "request": {
                    "method": "POST",
                    "url": "DocumentReference",
                    "ifNoneExist": f"identifier=urn:ietf:rfc:3986|{identifier}",
                },
            },
        ],
    }


def test_transaction_resolves_urn_uuid_references(client, token):
    response = client.post(
        "/fhir", json=_note_transaction("urn:uuid:note-1"), headers=bearer(token)
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    result = response.get_json()
    assert result["type"] == "transaction-response"
    provenance_entry, document_entry = result["entry"]
    assert document_entry["response"]["status"] == "201 Created"
    document_ref = document_entry["response"]["location"].split("/_history")[0]
    assert provenance_entry["resource"]["target"][0]["reference"] == document_ref

    stored = client.get("/_sandbox/resources/Provenance?patient=pt-01").get_json()
    assert [p["target"][0]["reference"] for p in stored] == [document_ref]


def test_transaction_if_none_exist_makes_retries_idempotent(client, token):
    first = client.post(
        "/fhir", json=_note_transaction("urn:uuid:note-2"), headers=bearer(token)
    ).get_json()
    again = client.post(
        "/fhir", json=_note_transaction("urn:uuid:note-2"), headers=bearer(token)
    ).get_json()
    assert again["entry"][1]["response"]["status"] == "200 OK"
    assert again["entry"][1]["response"]["location"] == first["entry"][1]["response"]["location"]
    assert again["entry"][0]["response"]["status"] == "200 OK"  # the Provenance, too
    documents = client.get("/_sandbox/resources/DocumentReference?patient=pt-01").get_json()
    assert sum(1 for d in documents if d.get("identifier")) == 1
    assert len(client.get("/_sandbox/resources/Provenance?patient=pt-01").get_json()) == 1


def test_transaction_is_all_or_nothing(client, token):
    bundle = _note_transaction("urn:uuid:note-3")
    bundle["entry"][0]["resource"]["agent"][0]["who"] = {"reference": "Practitioner/nobody"}
    before = client.get("/_sandbox/resources/DocumentReference?patient=pt-01").get_json()
    response = client.post("/fhir", json=bundle, headers=bearer(token))
    assert response.status_code == 422
    assert "Practitioner/nobody" in response.get_json()["issue"][0]["diagnostics"]
    after = client.get("/_sandbox/resources/DocumentReference?patient=pt-01").get_json()
    assert after == before


def test_transaction_cannot_write_into_another_patient(client, token):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": note(patient="pt-02"),
                "request": {"method": "POST", "url": "DocumentReference"},
            }
        ],
    }
    assert client.post("/fhir", json=bundle, headers=bearer(token)).status_code == 403


# -- create and update ------------------------------------------------------------------
def test_create_document_reference(client, token):
    response = client.post("/fhir/DocumentReference", json=note(), headers=bearer(token))
    assert response.status_code == 201
    created = response.get_json()
    assert created["id"]
    assert created["meta"]["versionId"] == "1"
    assert created["meta"]["lastUpdated"]
    assert response.headers["Location"] == (
        f"{FHIR_BASE}/DocumentReference/{created['id']}/_history/1"
    )
    read = get(client, f"/fhir/DocumentReference/{created['id']}", token)
    assert read.get_json() == created


def test_conditional_create_returns_the_existing_resource(client, token):
    headers = {**bearer(token), "If-None-Exist": "identifier=urn:ietf:rfc:3986|urn:uuid:n4"}
    first = client.post(
        "/fhir/DocumentReference", json=note(identifier="urn:uuid:n4"), headers=headers
    )
    second = client.post(
        "/fhir/DocumentReference", json=note(identifier="urn:uuid:n4"), headers=headers
    )
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.get_json()["id"] == second.get_json()["id"]


def test_update_bumps_the_version_and_honours_if_match(client, token):
    created = client.post("/fhir/DocumentReference", json=note(), headers=bearer(token))
    document = created.get_json()
    document["docStatus"] = "final"
    updated = client.put(
        f"/fhir/DocumentReference/{document['id']}",
        json=document,
        headers={**bearer(token), "If-Match": 'W/"1"'},
    )
    assert updated.status_code == 200
    assert updated.get_json()["meta"]["versionId"] == "2"
    stale = client.put(
        f"/fhir/DocumentReference/{document['id']}",
        json=document,
        headers={**bearer(token), "If-Match": 'W/"1"'},
    )
    assert stale.status_code == 412


def test_create_for_another_patient_is_forbidden(client, token):
    response = client.post("/fhir/DocumentReference", json=note("pt-02"), headers=bearer(token))
    assert response.status_code == 403


def test_invalid_resource_is_a_400_outcome_and_nothing_is_stored(client, token):
    bad = note()
    bad["status"] = {"not": "a code"}
    response = client.post("/fhir/DocumentReference", json=bad, headers=bearer(token))
    assert response.status_code == 400
    assert "status" in response.get_json()["issue"][0]["diagnostics"]
    malformed = client.post(
        "/fhir/DocumentReference",
        data="{not json",
        headers={**bearer(token), "Content-Type": "application/fhir+json"},
    )
    assert malformed.status_code == 400
    assert malformed.get_json()["resourceType"] == "OperationOutcome"


def test_app_cannot_create_clinical_data_types(client, token):
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/pt-01"},
    }
    response = client.post("/fhir/Observation", json=observation, headers=bearer(token))
    assert response.status_code in (403, 405)


# -- faults and counters ----------------------------------------------------------------
def test_injected_faults_fail_the_next_requests_then_clear(client, token):
    set_faults = client.post(
        "/_sandbox/faults", json={"fail_next": 2, "status": 503, "retry_after": 1}
    )
    assert set_faults.get_json()["fail_next"] == 2
    for _ in range(2):
        failed = get(client, "/fhir/Patient/pt-01", token)
        assert failed.status_code == 503
        assert failed.headers["Retry-After"] == "1"
        assert failed.get_json()["resourceType"] == "OperationOutcome"
    assert get(client, "/fhir/Patient/pt-01", token).status_code == 200

    client.post("/_sandbox/faults", json={"fail_next": 5, "status": 429})
    assert get(client, "/fhir/Patient/pt-01", token).status_code == 429
    client.delete("/_sandbox/faults")
    assert get(client, "/fhir/Patient/pt-01", token).status_code == 200


def test_fault_controls_validate_input(client):
    assert client.post("/_sandbox/faults", json={"fail_next": "two"}).status_code == 400
    assert client.post("/_sandbox/faults", json={"fail_next": 1, "status": 200}).status_code == 400
    assert client.post("/_sandbox/latency", json={"ms": -1}).status_code == 400


def test_stats_count_requests_by_kind_and_reset(client, token):
    client.post("/_sandbox/stats/reset")
    get(client, "/fhir/Patient/pt-01", token)
    get(client, "/fhir/Condition", token, patient="pt-01")
    get(client, "/fhir/Condition", token, patient="pt-01")
    stats = client.get("/_sandbox/stats").get_json()
    assert stats["kinds"] == {"read": 1, "search": 2}
    assert stats["fhir"] == 3
    assert client.post("/_sandbox/stats/reset").get_json()["total"] == 0


def test_latency_can_be_changed_at_run_time(client):
    assert client.post("/_sandbox/latency", json={"ms": 25}).get_json() == {"ms": 25}
    assert client.get("/_sandbox/stats").get_json()["latency_ms"] == 25


def test_controls_refuse_non_loopback_callers(ehr):
    remote = ehr.test_client()
    remote.environ_base["REMOTE_ADDR"] = "203.0.113.9"
    assert remote.get("/_sandbox/stats").status_code == 403
    assert remote.post("/_sandbox/faults", json={"fail_next": 1}).status_code == 403
    assert ehr.test_client().get("/_sandbox/stats").status_code == 200


# -- test data and the store ------------------------------------------------------------
def test_load_patient_bundle_and_inspect_the_store(client, smart: SmartClient):
    response = client.post("/_sandbox/patients", json=fixture("script-name-patient.json"))
    assert response.status_code == 201, response.get_data(as_text=True)
    patient_id = response.get_json()["patient"]
    conditions = client.get(f"/_sandbox/resources/Condition?patient={patient_id}").get_json()
    assert [c["subject"]["reference"] for c in conditions] == [f"Patient/{patient_id}"]
    token = smart.token(patient_id)
    assert token["patient"] == patient_id
    name = get(client, f"/fhir/Patient/{patient_id}", token).get_json()["name"][0]["family"]
    assert "<script>" in name
