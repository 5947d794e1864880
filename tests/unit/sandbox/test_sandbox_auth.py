"""Unit: the sandbox's SMART authorization server, through Flask's test client."""

from __future__ import annotations

import base64
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from sandbox_helpers import (
    APP_BASE,
    EHR_BASE,
    FHIR_BASE,
    REDIRECT_URI,
    SmartClient,
    bearer,
    load_manifest,
    make_ehr,
    query_of,
)

import smartapp.sandbox.auth as auth_module

CONFIDENTIAL = {
    "client_id": "confidential-app",
    "client_name": "Confidential test app",
    "redirect_uris": ["/callback"],
    "launch_uri": "/launch",
    "scope": "launch openid fhirUser patient/*.read offline_access",
    "token_endpoint_auth_method": "client_secret_basic",
    "client_secret": "s3cret-for-tests",
}
NARROW = {
    "client_id": "narrow-app",
    "redirect_uris": ["/callback"],
    "scope": "launch launch/patient openid fhirUser patient/Patient.rs",
    "token_endpoint_auth_method": "none",
}


# -- discovery --------------------------------------------------------------------------
def test_smart_configuration_advertises_s256_only_and_the_capabilities(client):
    response = client.get("/fhir/.well-known/smart-configuration")
    assert response.status_code == 200
    config = response.get_json()
    assert config["issuer"] == FHIR_BASE
    assert config["authorization_endpoint"] == f"{EHR_BASE}/auth/authorize"
    assert config["token_endpoint"] == f"{EHR_BASE}/auth/token"
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert "authorization_code" in config["grant_types_supported"]
    assert "refresh_token" in config["grant_types_supported"]
    for capability in (
        "launch-ehr",
        "launch-standalone",
        "client-public",
        "client-confidential-symmetric",
        "context-ehr-patient",
        "context-ehr-encounter",
        "context-standalone-patient",
        "context-banner",
        "context-style",
        "sso-openid-connect",
        "permission-offline",
        "permission-patient",
        "permission-v1",
        "permission-v2",
    ):
        assert capability in config["capabilities"]
    jwks = client.get(config["jwks_uri"].removeprefix(EHR_BASE)).get_json()
    assert jwks["keys"] and "d" not in jwks["keys"][0]


def test_capability_statement_names_oauth_uris_batch_and_transaction(client):
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    assert response.mimetype == "application/fhir+json"
    capability = response.get_json()
    assert capability["fhirVersion"] == "4.0.1"
    assert capability["date"]
    rest = capability["rest"][0]
    assert rest["mode"] == "server"
    assert {i["code"] for i in rest["interaction"]} >= {"batch", "transaction"}
    uris = {e["url"]: e["valueUri"] for e in rest["security"]["extension"][0]["extension"]}
    assert uris == {"authorize": f"{EHR_BASE}/auth/authorize", "token": f"{EHR_BASE}/auth/token"}
    observation = next(r for r in rest["resource"] if r["type"] == "Observation")
    assert {"patient", "category", "code", "date"} <= {
        p["name"] for p in observation["searchParam"]
    }


# -- EHR launch -------------------------------------------------------------------------
def test_ehr_launch_returns_context_refresh_token_and_style(smart: SmartClient, client):
    token = smart.token("pt-01")
    assert token["token_type"] == "Bearer"
    assert token["patient"] == "pt-01"
    assert token["encounter"].startswith("pt-01-enc-")
    assert token["need_patient_banner"] is False
    assert token["expires_in"] == 3600
    assert token["refresh_token"]
    assert "offline_access" in token["scope"].split()
    style = client.get(token["smart_style_url"].removeprefix(EHR_BASE))
    assert style.status_code == 200
    assert "color_background" in style.get_json()


def test_ehr_launch_without_launch_scope_is_refused(smart: SmartClient):
    launch = smart.launch("pt-01")
    response = smart.authorize(launch=launch, scope="openid fhirUser patient/Patient.rs")
    assert response.status_code == 302
    assert query_of(response.headers["Location"])["error"] == "invalid_scope"


def test_unknown_launch_id_is_refused_with_a_relaunch_hint(smart: SmartClient):
    response = smart.authorize(launch="no-such-launch")
    params = query_of(response.headers["Location"])
    assert params["error"] == "invalid_request"
    assert "relaunch" in params["error_description"]
    assert "code" not in params


# -- PKCE -------------------------------------------------------------------------------
def test_authorize_without_code_challenge_is_refused(smart: SmartClient):
    response = smart.authorize(launch=smart.launch(), code_challenge=None)
    params = query_of(response.headers["Location"])
    assert params["error"] == "invalid_request"
    assert params["error_description"].startswith("Missing code_challenge")
    assert "code" not in params


def test_authorize_without_any_pkce_is_refused(smart: SmartClient):
    response = smart.authorize(
        launch=smart.launch(), code_challenge=None, code_challenge_method=None
    )
    params = query_of(response.headers["Location"])
    assert params["error"] == "invalid_request"
    assert "code" not in params


def test_authorize_with_plain_pkce_is_refused(smart: SmartClient):
    response = smart.authorize(
        launch=smart.launch(), code_challenge="x" * 43, code_challenge_method="plain"
    )
    params = query_of(response.headers["Location"])
    assert params["error"] == "invalid_request"
    assert "S256" in params["error_description"]


def test_authorize_with_challenge_but_no_method_is_refused(smart: SmartClient):
    # RFC 7636 defaults a missing method to plain, which SMART forbids.
    response = smart.authorize(launch=smart.launch(), code_challenge_method=None)
    assert query_of(response.headers["Location"])["error"] == "invalid_request"


def test_wrong_code_verifier_is_rejected(smart: SmartClient):
    code = smart.code_for_launch()
    response = smart.exchange(code, verifier="w" * 64)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_grant"


def test_missing_code_verifier_is_rejected(smart: SmartClient):
    code = smart.code_for_launch()
    response = smart.exchange(code, verifier="", code_verifier=None)
    assert response.status_code == 400
    assert response.get_json()["error"] in ("invalid_request", "invalid_grant")


# -- codes ------------------------------------------------------------------------------
def test_code_is_single_use_and_replay_revokes_its_tokens(smart: SmartClient, client):
    code = smart.code_for_launch()
    first = smart.exchange(code)
    assert first.status_code == 200
    token = first.get_json()
    assert client.get("/fhir/Patient/pt-01", headers=bearer(token)).status_code == 200

    replay = smart.exchange(code)
    assert replay.status_code == 400
    assert replay.get_json()["error"] == "invalid_grant"
    # RFC 6749 §4.1.2: tokens issued from a replayed code are revoked.
    assert client.get("/fhir/Patient/pt-01", headers=bearer(token)).status_code == 401


def test_code_bound_to_its_redirect_uri(smart: SmartClient):
    code = smart.code_for_launch()
    response = smart.exchange(code, redirect_uri=f"{APP_BASE}/other")
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_grant"


def test_expired_code_is_rejected(smart: SmartClient, monkeypatch):
    code = smart.code_for_launch()
    later = time.time() + auth_module.CODE_LIFETIME + 5
    monkeypatch.setattr(auth_module.time, "time", lambda: later)
    response = smart.exchange(code)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_grant"


# -- request validation without a redirect ---------------------------------------------
def test_audience_mismatch_shows_an_error_page_and_never_redirects(smart: SmartClient):
    response = smart.authorize(launch=smart.launch(), aud="https://evil.example/fhir")
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert "aud" in response.get_data(as_text=True)


def test_unregistered_redirect_uri_is_not_followed(smart: SmartClient):
    response = smart.authorize(launch=smart.launch(), redirect_uri="https://evil.example/cb")
    assert response.status_code == 400
    assert "Location" not in response.headers


def test_unknown_client_is_refused(smart: SmartClient):
    response = smart.authorize(launch=smart.launch(), client_id="who-is-this")
    assert response.status_code == 400
    assert "Location" not in response.headers


def test_response_type_other_than_code_is_refused(smart: SmartClient):
    response = smart.authorize(launch=smart.launch(), response_type="token")
    assert query_of(response.headers["Location"])["error"] == "unsupported_response_type"


# -- scopes -----------------------------------------------------------------------------
def test_granted_scopes_are_the_intersection_with_the_registration(smart: SmartClient):
    smart.scope = (
        "launch openid fhirUser patient/Observation.read patient/Patient.cruds "
        "patient/Practitioner.rs user/Observation.rs offline_access"
    )
    granted = smart.token()["scope"].split()
    assert "patient/Observation.read" in granted  # v1 form kept when fully registered
    assert "patient/Patient.rs" in granted  # narrowed to what was registered
    assert "patient/Patient.cruds" not in granted
    assert "patient/Practitioner.rs" not in granted
    assert "user/Observation.rs" not in granted
    assert "offline_access" in granted


def test_offline_access_is_dropped_when_not_registered(tmp_path: Path, populated_dir: Path):
    app = make_ehr(tmp_path / "ehr", populated_dir, extra_clients=[NARROW])
    smart = SmartClient(
        app.test_client(),
        client_id="narrow-app",
        scope="launch openid fhirUser patient/Patient.rs offline_access",
    )
    token = smart.token()
    assert "offline_access" not in token["scope"].split()
    assert "refresh_token" not in token


def test_no_refresh_token_without_offline_or_online_access(smart: SmartClient):
    smart.scope = "launch openid fhirUser patient/Patient.rs"
    assert "refresh_token" not in smart.token()


# -- refresh ----------------------------------------------------------------------------
def test_refresh_rotates_the_refresh_token(smart: SmartClient, client):
    token = smart.token()
    refreshed = client.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": token["refresh_token"],
            "client_id": "smartapp",
        },
    )
    assert refreshed.status_code == 200, refreshed.get_data(as_text=True)
    new = refreshed.get_json()
    assert new["access_token"] != token["access_token"]
    assert new["refresh_token"] and new["refresh_token"] != token["refresh_token"]
    assert new["patient"] == "pt-01"
    assert new["scope"] == token["scope"]
    assert client.get("/fhir/Patient/pt-01", headers=bearer(new)).status_code == 200

    reused = client.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": token["refresh_token"],
            "client_id": "smartapp",
        },
    )
    assert reused.status_code == 400
    assert reused.get_json()["error"] == "invalid_grant"


def test_refresh_token_is_bound_to_its_client(tmp_path: Path, populated_dir: Path):
    app = make_ehr(tmp_path / "ehr", populated_dir, extra_clients=[NARROW])
    smart = SmartClient(app.test_client())
    token = smart.token()
    stolen = app.test_client().post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": token["refresh_token"],
            "client_id": "narrow-app",
        },
    )
    assert stolen.status_code == 400
    assert stolen.get_json()["error"] == "invalid_grant"


# -- tokens expire ----------------------------------------------------------------------
def test_expired_access_token_gets_401_invalid_token(smart: SmartClient, client, monkeypatch):
    token = smart.token()
    later = time.time() + 3600 + 5
    monkeypatch.setattr(auth_module.time, "time", lambda: later)
    response = client.get("/fhir/Patient/pt-01", headers=bearer(token))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_access_token_lifetime_is_configurable(tmp_path: Path, populated_dir: Path):
    app = make_ehr(tmp_path / "ehr", populated_dir, access_token_lifetime=120)
    assert SmartClient(app.test_client()).token()["expires_in"] == 120


# -- id_token ---------------------------------------------------------------------------
def _decode_id_token(client, id_token: str) -> Any:
    config = client.get("/fhir/.well-known/smart-configuration").get_json()
    keys = KeySet.import_key_set(client.get(config["jwks_uri"].removeprefix(EHR_BASE)).get_json())
    return jwt.decode(id_token, keys, algorithms=["RS256"])


def test_id_token_verifies_with_the_jwks_and_carries_fhir_user_and_nonce(
    smart: SmartClient, client
):
    token = smart.token()
    decoded = _decode_id_token(client, token["id_token"])
    claims = decoded.claims
    assert decoded.header["alg"] == "RS256"
    assert decoded.header["kid"]
    assert claims["iss"] == FHIR_BASE
    assert claims["aud"] == "smartapp"
    assert claims["nonce"] == smart.nonce
    assert claims["sub"] == "dr-ada-lovelace"
    assert claims["fhirUser"] == f"{FHIR_BASE}/Practitioner/dr-ada-lovelace"
    assert claims["exp"] > claims["iat"]


def test_id_token_signature_fails_with_another_key(smart: SmartClient):
    token = smart.token()
    other = KeySet([RSAKey.generate_key(2048)])
    with pytest.raises(Exception):  # noqa: B017 - joserfc's BadSignatureError or a kid miss
        jwt.decode(token["id_token"], other, algorithms=["RS256"])


def test_no_id_token_without_openid(smart: SmartClient):
    smart.scope = "launch patient/Patient.rs"
    assert "id_token" not in smart.token()


def test_signing_key_persists_across_restarts(tmp_path: Path, populated_dir: Path):
    first = make_ehr(tmp_path / "ehr", populated_dir)
    keys = first.test_client().get("/auth/jwks.json").get_json()
    first.extensions["smartapp.sandbox"].store.close()
    second = make_ehr(tmp_path / "ehr", populated_dir)
    assert second.test_client().get("/auth/jwks.json").get_json() == keys


# -- standalone launch ------------------------------------------------------------------
STANDALONE_SCOPE = "launch/patient openid fhirUser patient/Patient.rs patient/Observation.rs"


def test_standalone_launch_shows_a_sign_in_form(smart: SmartClient):
    smart.scope = STANDALONE_SCOPE
    response = smart.authorize()
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    for field in (
        'name="user"',
        'name="patient"',
        'name="decision"',
        'value="approve"',
        'name="code_challenge"',
        'name="state"',
    ):
        assert field in page


def test_standalone_launch_approve_gives_chosen_patient_and_banner(smart: SmartClient, client):
    smart.scope = STANDALONE_SCOPE
    params = smart.authorize_params()
    response = client.post(
        "/auth/authorize",
        data={**params, "user": "np-mary-seacole", "patient": "pt-02", "decision": "approve"},
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    redirect = query_of(response.headers["Location"])
    assert redirect["state"] == smart.state
    token = smart.exchange(redirect["code"]).get_json()
    assert token["patient"] == "pt-02"
    assert token["need_patient_banner"] is True
    claims = _decode_id_token(client, token["id_token"]).claims
    assert claims["fhirUser"].endswith("/Practitioner/np-mary-seacole")


def test_standalone_sign_in_without_patient_scope_has_no_patient(smart: SmartClient, client):
    smart.scope = "openid fhirUser"
    params = smart.authorize_params()
    response = client.post(
        "/auth/authorize", data={**params, "user": "dr-william-osler", "decision": "approve"}
    )
    token = smart.exchange(query_of(response.headers["Location"])["code"]).get_json()
    assert "patient" not in token
    assert token["scope"].split() == ["openid", "fhirUser"]


def test_standalone_deny_redirects_access_denied(smart: SmartClient, client):
    smart.scope = STANDALONE_SCOPE
    params = smart.authorize_params()
    response = client.post("/auth/authorize", data={**params, "decision": "deny"})
    redirect = query_of(response.headers["Location"])
    assert redirect["error"] == "access_denied"
    assert redirect["state"] == smart.state


def test_standalone_without_a_patient_choice_asks_again(smart: SmartClient, client):
    smart.scope = STANDALONE_SCOPE
    params = smart.authorize_params()
    response = client.post(
        "/auth/authorize", data={**params, "user": "dr-ada-lovelace", "decision": "approve"}
    )
    assert response.status_code == 400
    assert "Choose a patient" in response.get_data(as_text=True)


def test_launch_scope_without_launch_parameter_is_refused(smart: SmartClient):
    response = smart.authorize()  # the manifest's scope includes "launch"
    assert query_of(response.headers["Location"])["error"] == "invalid_scope"


# -- confidential clients -----------------------------------------------------------------
def _basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def test_confidential_symmetric_client_authenticates_with_basic(
    tmp_path: Path, populated_dir: Path
):
    app = make_ehr(tmp_path / "ehr", populated_dir, extra_clients=[CONFIDENTIAL])
    smart = SmartClient(
        app.test_client(),
        client_id="confidential-app",
        scope="launch openid fhirUser patient/*.read offline_access",
    )
    code = smart.code_for_launch()
    wrong = smart.exchange(code, headers=_basic("confidential-app", "nope"), client_id=None)
    assert wrong.status_code == 401
    assert wrong.get_json()["error"] == "invalid_client"
    anonymous = smart.exchange(code)
    assert anonymous.status_code in (400, 401)
    assert anonymous.get_json()["error"] == "invalid_client"
    good = smart.exchange(
        code, headers=_basic("confidential-app", "s3cret-for-tests"), client_id=None
    )
    assert good.status_code == 200, good.get_data(as_text=True)
    assert good.get_json()["scope"].split() == [
        "launch",
        "openid",
        "fhirUser",
        "patient/*.read",
        "offline_access",
    ]


def _assertion(key: RSAKey, *, client_id: str, jti: str | None = None, alg: str = "RS384") -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": f"{EHR_BASE}/auth/token",
        "exp": now + 240,
        "jti": jti or secrets.token_urlsafe(12),
    }
    return jwt.encode(
        {"alg": alg, "kid": key.thumbprint(), "typ": "JWT"}, claims, key, algorithms=[alg]
    )


def test_confidential_asymmetric_client_authenticates_with_private_key_jwt(
    tmp_path: Path, populated_dir: Path
):
    key = RSAKey.generate_key(2048, private=True)
    public = key.as_dict(private=False) | {"kid": key.thumbprint(), "alg": "RS384"}
    registration = {
        "client_id": "jwt-app",
        "redirect_uris": ["/callback"],
        "scope": "launch openid fhirUser patient/*.rs",
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": [public]},
    }
    app = make_ehr(tmp_path / "ehr", populated_dir, extra_clients=[registration])
    smart = SmartClient(
        app.test_client(), client_id="jwt-app", scope="launch openid fhirUser patient/*.rs"
    )
    assertion_type = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    jti = secrets.token_urlsafe(12)
    code = smart.code_for_launch()
    good = smart.exchange(
        code,
        client_id=None,
        client_assertion_type=assertion_type,
        client_assertion=_assertion(key, client_id="jwt-app", jti=jti),
    )
    assert good.status_code == 200, good.get_data(as_text=True)
    assert good.get_json()["patient"] == "pt-01"

    code = smart.code_for_launch()
    replayed = smart.exchange(
        code,
        client_id=None,
        client_assertion_type=assertion_type,
        client_assertion=_assertion(key, client_id="jwt-app", jti=jti),
    )
    assert replayed.status_code in (400, 401)
    assert replayed.get_json()["error"] == "invalid_client"

    stranger = RSAKey.generate_key(2048, private=True)
    forged = smart.exchange(
        code,
        client_id=None,
        client_assertion_type=assertion_type,
        client_assertion=_assertion(stranger, client_id="jwt-app"),
    )
    assert forged.status_code in (400, 401)
    assert forged.get_json()["error"] == "invalid_client"


def test_public_client_cannot_pretend_to_be_confidential(tmp_path: Path, populated_dir: Path):
    app = make_ehr(tmp_path / "ehr", populated_dir, extra_clients=[CONFIDENTIAL])
    smart = SmartClient(
        app.test_client(), client_id="confidential-app", scope="launch patient/*.read"
    )
    code = smart.code_for_launch()
    # A confidential client's code cannot be redeemed by PKCE alone.
    response = smart.exchange(code)
    assert response.get_json()["error"] == "invalid_client"


def test_manifest_uris_resolve_against_the_app_base(ehr):
    sandbox = ehr.extensions["smartapp.sandbox"]
    registration = sandbox.auth.clients["smartapp"]
    assert registration.redirect_uris == (REDIRECT_URI,)
    assert registration.launch_uri == f"{APP_BASE}/launch"
    assert "offline_access" in registration.scope
    assert load_manifest()["client_id"] == "smartapp"


# -- revocation (RFC 7009) ----------------------------------------------------------------
def test_smart_configuration_advertises_revocation(client):
    config = client.get("/fhir/.well-known/smart-configuration").get_json()
    assert config["revocation_endpoint"].endswith("/auth/revoke")


def test_revoking_the_refresh_token_ends_the_grant(smart: SmartClient, client):
    token = smart.token()
    revoked = client.post(
        "/auth/revoke",
        data={
            "token": token["refresh_token"],
            "token_type_hint": "refresh_token",
            "client_id": "smartapp",
        },
    )
    assert revoked.status_code == 200, revoked.get_data(as_text=True)
    refreshed = client.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": token["refresh_token"],
            "client_id": "smartapp",
        },
    )
    assert refreshed.status_code == 400
    # Its access token went with it.
    assert client.get("/fhir/Patient/pt-01", headers=bearer(token)).status_code == 401


def test_another_client_cannot_revoke_a_token(tmp_path: Path, populated_dir: Path):
    app = make_ehr(tmp_path / "ehr", populated_dir, extra_clients=[NARROW])
    token = SmartClient(app.test_client()).token()
    refused = app.test_client().post(
        "/auth/revoke", data={"token": token["refresh_token"], "client_id": "narrow-app"}
    )
    assert refused.status_code == 400
    assert app.test_client().get("/fhir/Patient/pt-01", headers=bearer(token)).status_code == 200
