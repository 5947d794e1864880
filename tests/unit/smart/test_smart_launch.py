"""Unit: /launch, /callback and the launch session through the Flask test client.

The authorization server is faked with `responses` (discovery, token, JWKS).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from datetime import timedelta

import pytest
from flask import jsonify
from smart_fakes import AUTHORIZE, ISS, TOKEN, authorize_params, make_settings
from sqlalchemy import select, text, update

from smartapp import create_app
from smartapp.db import utcnow
from smartapp.smart.models import LaunchSession, PendingAuthorization
from smartapp.smart.session import current_launch
from smartapp.smart.views import start_authorization
from tests.conftest import close_app

MANIFEST_SCOPE = (
    "launch openid fhirUser patient/Patient.rs patient/Encounter.rs patient/Condition.rs "
    "patient/Observation.rs patient/MedicationRequest.rs patient/MedicationStatement.rs "
    "patient/Medication.rs patient/AllergyIntolerance.rs patient/Procedure.rs "
    "patient/Immunization.rs patient/DocumentReference.crus patient/Provenance.c offline_access"
)
ACCESS_TOKEN = "at-ehr-launch-0001"
REFRESH_TOKEN = "rt-ehr-launch-0001"


@pytest.fixture
def app(app):
    """The shared app, plus two routes that stand in for the sidebar's API."""

    @app.get("/api/test-context")
    def _context():
        launch = current_launch()
        return jsonify(
            {
                "patient": launch.patient_id,
                "encounter": launch.encounter_id,
                "fhirUser": launch.fhir_user,
                "fhirUserRaw": launch.fhir_user_raw,
                "scope": str(launch.scopes),
                "banner": launch.need_patient_banner,
                "tenant": launch.tenant,
            }
        )

    @app.post("/api/test-write")
    def _write():
        return jsonify({"patient": current_launch().patient_id})

    @app.get("/admin/test-signin")
    def _admin_signin():
        return start_authorization(iss=ISS, launch=None, purpose="admin", scope="openid fhirUser")

    @app.get("/admin/test-whoami")
    def _admin_whoami():
        return jsonify({"fhirUser": current_launch(purpose="admin").fhir_user})

    return app


@pytest.fixture
def make_app(tmp_path):
    """Apps with their own settings; their engines are disposed after the test."""
    made = []

    def build(**env):
        app = create_app(make_settings(tmp_path, **env))
        made.append(app)
        return app

    yield build
    for app in made:
        close_app(app)


def _db(app):
    return app.extensions["smartapp.db"]


def _sessions(app):
    with _db(app).session() as s:
        return list(s.scalars(select(LaunchSession)))


def _set_cookie_headers(response):
    return response.headers.getlist("Set-Cookie")


def _cookie_header(response, name):
    (header,) = [h for h in _set_cookie_headers(response) if h.startswith(name + "=")]
    return header


# -- /launch -----------------------------------------------------------------------------


def test_ehr_launch_redirects_to_authorize_with_smart_parameters(client, ehr):
    response = client.get("/launch", query_string={"iss": ISS, "launch": "launch-abc"})
    params = authorize_params(response)
    assert params["aud"] == ISS
    assert params["launch"] == "launch-abc"
    assert params["scope"] == MANIFEST_SCOPE
    assert params["response_type"] == "code"
    assert params["client_id"] == "smartapp"
    assert params["redirect_uri"] == "http://localhost/callback"
    assert params["code_challenge_method"] == "S256"
    assert len(params["code_challenge"]) == 43
    assert params["nonce"]
    # The redirect has no body: it would repeat the state.
    assert response.get_data() == b""


def test_standalone_launch_asks_for_a_patient_instead_of_launch(client, ehr):
    params = authorize_params(client.get("/launch", query_string={"iss": ISS}))
    scopes = params["scope"].split()
    assert "launch" not in scopes
    assert "launch/patient" in scopes
    assert "launch/encounter" not in scopes  # not in the manifest
    assert "launch" not in params


def test_redirect_uri_resolves_against_the_public_url(make_app, ehr):
    app = make_app(SMARTAPP_PUBLIC_URL="https://app.example.org/smart/")
    params = authorize_params(app.test_client().get("/launch", query_string={"iss": ISS}))
    assert params["redirect_uri"] == "https://app.example.org/smart/callback"


def test_state_has_at_least_128_bits_and_is_stored_only_as_a_hash(client, app, ehr):
    params = authorize_params(client.get("/launch", query_string={"iss": ISS, "launch": "l"}))
    state = params["state"]
    assert len(base64.urlsafe_b64decode(state + "==")) >= 16
    with _db(app).session() as s:
        (pending,) = s.scalars(select(PendingAuthorization))
        assert pending.state_hash == hashlib.sha256(state.encode()).hexdigest()
        stored = " ".join(str(v) for v in vars(pending).values())
    assert state not in stored
    assert "dBjft" not in stored  # sanity: nothing verifier-like in clear either
    assert params["nonce"] == pending.nonce


def test_launch_sets_a_partitioned_binding_cookie(client, ehr):
    response = client.get("/launch", query_string={"iss": ISS, "launch": "l"})
    header = _cookie_header(response, "smartapp_auth")
    for attribute in ("Secure", "HttpOnly", "SameSite=None", "Partitioned", "Max-Age=600"):
        assert attribute in header


def test_unknown_issuer_is_refused_before_any_request(client, rsps, ehr):
    response = client.get(
        "/launch", query_string={"iss": "https://evil.example/fhir", "launch": "l"}
    )
    assert response.status_code == 400
    assert "not registered" in response.get_data(as_text=True)
    assert len(rsps.calls) == 0
    assert not _set_cookie_headers(response)


def test_issuer_prefix_trick_is_refused(client, rsps, ehr):
    response = client.get("/launch", query_string={"iss": ISS + ".evil.example/fhir"})
    assert response.status_code == 400
    assert len(rsps.calls) == 0


def test_issuer_with_trailing_slash_is_normalised(client, ehr):
    params = authorize_params(client.get("/launch", query_string={"iss": ISS + "/"}))
    assert params["aud"] == ISS


def test_missing_iss_explains_how_to_open_the_app(client, rsps):
    response = client.get("/launch")
    assert response.status_code == 400
    assert "Open the app from the patient" in response.get_data(as_text=True)
    assert len(rsps.calls) == 0


def test_discovery_failure_is_a_clear_page(client, rsps, caplog):
    rsps.get(f"{ISS}/.well-known/smart-configuration", json={"authorization_endpoint": AUTHORIZE})
    with caplog.at_level(logging.INFO, logger="smartapp.errors"):
        response = client.get("/launch", query_string={"iss": ISS, "launch": "l"})
    assert response.status_code == 502
    page = response.get_data(as_text=True)
    # The clinician reads what to do; the technical reason is in the log for IT.
    assert "sign-in settings" in page and "S256" not in page
    assert "S256" in caplog.text


# -- /callback and the session ----------------------------------------------------------


def test_full_round_trip_creates_a_session(client, app, ehr, launcher):
    params = launcher.start()
    response = launcher.complete(params)
    assert response.status_code == 302
    assert response.headers["Location"] == "/"

    token_request = ehr.token_requests[0]["form"]
    assert token_request["grant_type"] == "authorization_code"
    assert token_request["code"] == "code-xyz"
    assert token_request["redirect_uri"] == params["redirect_uri"]
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(token_request["code_verifier"].encode()).digest())
        .rstrip(b"=")
        .decode()
    )
    assert challenge == params["code_challenge"]

    context = client.get("/api/test-context").get_json()
    assert context == {
        "patient": "pat-123",
        "encounter": "enc-456",
        "fhirUser": "Practitioner/prac-1",
        "fhirUserRaw": "Practitioner/prac-1",
        "scope": "launch openid fhirUser patient/Patient.rs patient/Condition.rs "
        "patient/Observation.rs offline_access",
        "banner": True,
        "tenant": "clinic-a",
    }


def test_session_cookie_attributes(launcher):
    response = launcher.launch()
    header = _cookie_header(response, "smartapp_session")
    for attribute in ("Secure", "HttpOnly", "SameSite=None", "Partitioned", "Path=/"):
        assert attribute in header
    value = header.split(";")[0].split("=", 1)[1]
    assert len(base64.urlsafe_b64decode(value + "==")) >= 32  # 256 bits
    # The binding cookie is cleared.
    assert "Max-Age=0" in _cookie_header(response, "smartapp_auth")


def test_session_row_key_is_the_hash_of_the_cookie(app, launcher):
    response = launcher.launch()
    value = _cookie_header(response, "smartapp_session").split(";")[0].split("=", 1)[1]
    (row,) = _sessions(app)
    assert row.id == hashlib.sha256(value.encode()).hexdigest()


def test_tokens_are_encrypted_in_the_database(app, launcher):
    launcher.launch()
    with _db(app).engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM smart_launch_session")).fetchall()
    assert len(rows) == 1
    dump = repr(tuple(rows[0]))
    assert ACCESS_TOKEN not in dump
    assert REFRESH_TOKEN not in dump
    assert "eyJ" not in dump.replace("gAAAAA", "")  # no raw id_token kept either
    services = app.extensions["smartapp.smart"]
    (row,) = _sessions(app)
    assert services.cipher.decrypt(row.access_token_enc) == ACCESS_TOKEN
    assert services.cipher.decrypt(row.refresh_token_enc) == REFRESH_TOKEN


def test_no_token_code_or_state_reaches_the_browser(client, launcher, ehr):
    responses_seen = []
    start = client.get("/launch", query_string={"iss": ISS, "launch": "launch-abc"})
    responses_seen.append(start)
    params = authorize_params(start)
    responses_seen.append(launcher.complete(params))
    responses_seen.append(client.get("/api/test-context"))
    responses_seen.append(
        client.get("/callback", query_string={"code": "code-xyz", "state": params["state"]})
    )
    id_token = ehr.issued[0]["id_token"]
    secrets = [ACCESS_TOKEN, REFRESH_TOKEN, "code-xyz", params["state"], id_token]
    for response in responses_seen:
        body = response.get_data(as_text=True)
        cookies = " ".join(_set_cookie_headers(response))
        for secret in secrets:
            assert secret not in body
            assert secret not in cookies


def test_reused_state_is_refused(client, launcher, ehr):
    params = launcher.start()
    assert launcher.complete(params).status_code == 302
    again = client.get("/callback", query_string={"code": "code-xyz", "state": params["state"]})
    assert again.status_code == 400
    assert "already used" in again.get_data(as_text=True)
    assert len(ehr.token_requests) == 1


def test_forged_state_is_refused_without_a_token_request(client, ehr):
    client.get("/launch", query_string={"iss": ISS, "launch": "l"})
    response = client.get("/callback", query_string={"code": "c", "state": "forged-state-value"})
    assert response.status_code == 400
    assert "open the app again from the patient" in response.get_data(as_text=True)
    assert ehr.token_requests == []


def test_callback_without_state_explains(client, rsps):
    response = client.get("/callback")
    assert response.status_code == 400
    assert "patient's chart" in response.get_data(as_text=True)


def test_state_from_another_browser_is_refused(app, launcher, ehr):
    params = launcher.start()
    other_browser = app.test_client()
    response = other_browser.get(
        "/callback", query_string={"code": "code-xyz", "state": params["state"]}
    )
    assert response.status_code == 400
    assert "another browser" in response.get_data(as_text=True)
    assert ehr.token_requests == []


def test_expired_state_is_refused(app, launcher, ehr):
    params = launcher.start()
    with _db(app).session() as s:
        s.execute(update(PendingAuthorization).values(expires_at=utcnow() - timedelta(seconds=1)))
    response = launcher.complete(params)
    assert response.status_code == 400
    assert "expired" in response.get_data(as_text=True)
    assert ehr.token_requests == []


def test_authorization_error_shows_a_clear_page(client, launcher, ehr):
    params = launcher.start()
    response = client.get(
        "/callback",
        query_string={
            "error": "access_denied",
            "error_description": "<script>alert(1)</script>",
            "state": params["state"],
        },
    )
    assert response.status_code == 403
    body = response.get_data(as_text=True)
    assert "not granted" in body
    assert "<script>alert(1)" not in body
    # The state is spent.
    assert launcher.complete(params).status_code == 400


def test_clinician_launch_without_patient_is_refused(client, launcher, ehr):
    params = launcher.start()
    response = launcher.complete(params, token=ehr.token_response(patient=None))
    assert response.status_code == 502
    assert "which patient" in response.get_data(as_text=True)
    assert not any(h.startswith("smartapp_session=") for h in _set_cookie_headers(response))


def test_invalid_patient_id_is_refused(launcher, ehr):
    params = launcher.start()
    response = launcher.complete(params, token=ehr.token_response(patient="../Patient/x"))
    assert response.status_code == 502


def test_bad_id_token_creates_no_session(app, launcher, ehr, caplog):
    params = launcher.start()
    body = ehr.token_response()
    body["id_token"] = ehr.id_token(nonce="not-the-nonce")
    with caplog.at_level(logging.INFO, logger="smartapp.errors"):
        response = launcher.complete(params, token=body)
    assert response.status_code == 502
    page = response.get_data(as_text=True)
    assert "sign-in could not be verified" in page and "invalid_id_token" in page
    assert "does not belong to this sign-in" not in page
    assert "does not belong to this sign-in" in caplog.text
    assert _sessions(app) == []


def test_openid_granted_without_id_token_is_refused(client, launcher, ehr, caplog):
    params = launcher.start()
    ehr.queue_token(ehr.token_response())  # openid granted, no id_token
    with caplog.at_level(logging.INFO, logger="smartapp.errors"):
        response = client.get("/callback", query_string={"code": "c", "state": params["state"]})
    assert response.status_code == 502
    assert "sign-in could not be verified" in response.get_data(as_text=True)
    assert "no identity token" in caplog.text


def test_identity_not_granted_gives_a_session_without_fhir_user(client, launcher, ehr):
    params = launcher.start()
    ehr.queue_token(ehr.token_response(scope="launch patient/Patient.rs"))
    response = client.get("/callback", query_string={"code": "c", "state": params["state"]})
    assert response.status_code == 302
    context = client.get("/api/test-context").get_json()
    assert context["fhirUser"] is None
    assert context["scope"] == "launch patient/Patient.rs"


def test_absolute_fhir_user_is_normalised_in_the_context(client, launcher):
    raw = "https://ehr.test/fhir/Practitioner/prac-9"
    launcher.complete(launcher.start(), fhirUser=raw)
    context = client.get("/api/test-context").get_json()
    assert context["fhirUser"] == "Practitioner/prac-9"
    assert context["fhirUserRaw"] == raw


def test_relaunch_replaces_the_previous_session(app, launcher):
    launcher.launch()
    first = _sessions(app)[0].id
    launcher.launch()
    ids = [row.id for row in _sessions(app)]
    assert len(ids) == 1 and ids[0] != first


def test_no_session_is_401(client):
    response = client.get("/api/test-context")
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "not_authenticated"


def test_idle_session_expires(app, client, launcher):
    launcher.launch()
    with _db(app).session() as s:
        s.execute(update(LaunchSession).values(last_seen_at=utcnow() - timedelta(hours=2)))
    assert client.get("/api/test-context").status_code == 401
    assert _sessions(app) == []


def test_absolute_lifetime_ends_a_session(app, client, launcher):
    launcher.launch()
    with _db(app).session() as s:
        s.execute(update(LaunchSession).values(absolute_expires_at=utcnow()))
    assert client.get("/api/test-context").status_code == 401


# -- CSRF --------------------------------------------------------------------------------


def test_post_without_csrf_token_is_refused(client, launcher):
    launcher.launch()
    response = client.post("/api/test-write")
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "csrf_failed"


def test_post_with_wrong_csrf_token_is_refused(client, launcher):
    launcher.launch()
    response = client.post("/api/test-write", headers={"X-CSRF-Token": "guess"})
    assert response.status_code == 403


def test_post_with_the_sessions_csrf_token_passes(client, app, launcher):
    launcher.launch()
    token = _sessions(app)[0].csrf_token
    response = client.post("/api/test-write", headers={"X-CSRF-Token": token})
    assert response.status_code == 200
    assert response.get_json() == {"patient": "pat-123"}


def test_post_without_a_session_is_refused(client):
    assert client.post("/api/test-write", headers={"X-CSRF-Token": "x"}).status_code == 403


def test_stale_tab_gets_an_error_not_the_other_patients_data(app, client, launcher, ehr):
    launcher.launch()
    old_csrf = _sessions(app)[0].csrf_token
    launcher.complete(launcher.start(launch="launch-2"), token=ehr.token_response(patient="pat-2"))
    response = client.get("/api/test-context", headers={"X-CSRF-Token": old_csrf})
    assert response.status_code == 401
    assert "earlier launch" in response.get_json()["error"]["message"]


# -- admin sign-in through the same flow -------------------------------------------------


def test_admin_sign_in_uses_its_own_cookie_and_lands_on_admin(app, client, ehr):
    params = authorize_params(client.get("/admin/test-signin"))
    assert params["scope"] == "openid fhirUser"
    assert "launch" not in params
    body = {
        "access_token": ACCESS_TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "openid fhirUser",
        "id_token": ehr.id_token(nonce=params["nonce"], fhirUser="Practitioner/admin-1"),
    }
    ehr.queue_token(body)
    response = client.get("/callback", query_string={"code": "c", "state": params["state"]})
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin"
    assert _cookie_header(response, "smartapp_admin")
    assert client.get("/admin/test-whoami").get_json() == {"fhirUser": "Practitioner/admin-1"}
    # An admin session is not a clinician launch.
    assert client.get("/api/test-context").status_code == 401


# -- JWKS ------------------------------------------------------------------------------


def test_jwks_is_empty_without_a_key(client):
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.get_json() == {"keys": []}


def test_jwks_serves_the_public_key_and_token_requests_use_private_key_jwt(tmp_path, make_app, ehr):
    from joserfc.jwk import RSAKey

    key_path = tmp_path / "app.pem"
    key_path.write_bytes(RSAKey.generate_key(2048).as_pem(private=True))
    app = make_app(SMARTAPP_PRIVATE_KEY=str(key_path))
    client = app.test_client()
    (jwk,) = client.get("/.well-known/jwks.json").get_json()["keys"]
    assert jwk["kty"] == "RSA" and jwk["alg"] == "RS384" and "d" not in jwk

    params = authorize_params(client.get("/launch", query_string={"iss": ISS, "launch": "l"}))
    body = ehr.token_response()
    body["id_token"] = ehr.id_token(nonce=params["nonce"])
    ehr.queue_token(body)
    assert (
        client.get("/callback", query_string={"code": "c", "state": params["state"]}).status_code
        == 302
    )
    form = ehr.token_requests[0]["form"]
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    from joserfc import jwt

    decoded = jwt.decode(form["client_assertion"], _keyset(jwk), algorithms=["RS384"])
    assert decoded.claims["aud"] == TOKEN
    assert decoded.header["kid"] == jwk["kid"]


def _keyset(jwk):
    from joserfc.jwk import KeySet

    return KeySet.import_key_set({"keys": [jwk]})


def test_non_ascii_csrf_header_is_a_403_not_a_500(client, launcher):
    launcher.launch()
    response = client.post("/api/test-write", headers={"X-CSRF-Token": "tökén"})
    assert response.status_code == 403
    assert client.get("/api/test-context", headers={"X-CSRF-Token": "tökén"}).status_code == 401


def test_long_context_values_are_stored(client, launcher, ehr):
    # intent and tenant are free strings: a long one must not break the store (PostgreSQL).
    params = launcher.start()
    body = ehr.token_response(intent="i" * 1000, tenant="t" * 1000)
    assert launcher.complete(params, token=body).status_code == 302
    assert client.get("/api/test-context").get_json()["tenant"] == "t" * 1000
