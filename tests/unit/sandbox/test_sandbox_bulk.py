"""Unit: the sandbox's Backend Services token endpoint and Bulk `$export` (Flask test client):
a client_credentials token for a registered backend client, kick-off, status with
Retry-After, NDJSON files, delete; patient-context tokens may not export."""

from __future__ import annotations

import json
import secrets
import time

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from smartapp.sandbox.bulk import RETRY_AFTER_SECONDS
from tests.unit.sandbox.sandbox_helpers import EHR_BASE, FHIR_BASE, bearer, make_ehr

KEY = RSAKey.generate_key(2048, private=True)
BACKEND = {
    "client_id": "backend-1",
    "redirect_uris": ["/callback"],
    "token_endpoint_auth_method": "private_key_jwt",
    "grant_types": ["client_credentials"],
    "scope": "system/Encounter.rs system/DocumentReference.rs",
    "jwks": {"keys": [{**KEY.as_dict(private=False), "kid": "k1", "alg": "RS384"}]},
}


@pytest.fixture
def bulk_client(tmp_path, populated_dir):
    app = make_ehr(tmp_path / "ehr", populated_dir, extra_clients=[BACKEND])
    yield app.test_client()
    app.extensions["smartapp.sandbox"].store.close()


def system_token(client, scope="system/Encounter.rs system/DocumentReference.rs"):
    now = int(time.time())
    assertion = jwt.encode(
        {"alg": "RS384", "kid": "k1"},
        {
            "iss": "backend-1",
            "sub": "backend-1",
            "aud": f"{EHR_BASE}/auth/token",
            "iat": now,
            "exp": now + 240,
            "jti": secrets.token_hex(8),
        },
        KEY,
        algorithms=["RS384"],
    )
    return client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    )


ASYNC = {"Accept": "application/fhir+json", "Prefer": "respond-async"}


def test_patient_level_export_runs_to_its_files_and_is_deleted(bulk_client):
    token = system_token(bulk_client).get_json()
    assert "refresh_token" not in token
    headers = {**bearer(token["access_token"]), **ASYNC}
    kicked = bulk_client.get("/fhir/Patient/$export?_type=Encounter", headers=headers)
    assert kicked.status_code == 202
    status_url = kicked.headers["Content-Location"]
    assert status_url.startswith(f"{FHIR_BASE}/$export-status/")
    path = status_url.removeprefix(EHR_BASE)

    waiting = bulk_client.get(path, headers=bearer(token["access_token"]))
    assert waiting.status_code == 202
    assert waiting.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    manifest = bulk_client.get(path, headers=bearer(token["access_token"])).get_json()
    assert manifest["requiresAccessToken"] is True
    [output] = manifest["output"]
    body = bulk_client.get(
        output["url"].removeprefix(EHR_BASE), headers=bearer(token["access_token"])
    )
    assert body.mimetype == "application/fhir+ndjson"
    lines = [json.loads(line) for line in body.get_data(as_text=True).splitlines() if line]
    assert len(lines) == output["count"] > 0
    assert {r["resourceType"] for r in lines} == {"Encounter"}

    assert bulk_client.delete(path, headers=bearer(token["access_token"])).status_code == 202
    assert bulk_client.get(path, headers=bearer(token["access_token"])).status_code == 404


def test_backend_services_grant_only_system_scopes(bulk_client):
    refused = system_token(bulk_client, scope="patient/Encounter.rs")
    assert refused.status_code == 400
    assert refused.get_json()["error"] == "invalid_scope"


def test_a_patient_token_may_not_export(client, smart):
    patient_token = smart.token("pt-01")
    response = client.get(
        "/fhir/$export?_type=Encounter", headers={**bearer(patient_token), **ASYNC}
    )
    assert response.status_code == 403
    assert response.get_json()["issue"][0]["code"] == "forbidden"


def test_kick_off_needs_respond_async(bulk_client):
    token = system_token(bulk_client).get_json()["access_token"]
    response = bulk_client.get("/fhir/$export", headers=bearer(token))
    assert response.status_code == 400
