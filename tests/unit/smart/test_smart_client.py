"""Unit: the OAuth client: authorize URL, code exchange, client authentication, refresh."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import RSAKey
from smart_fakes import AUTHORIZE, CLIENT_ID, ISS, TOKEN, FakeEHR

from smartapp.errors import AuthorizationFailed, TemporaryUpstreamError
from smartapp.smart.client import (
    ClientAuthentication,
    RefreshRefused,
    SMARTClient,
    TokenResponse,
)
from smartapp.smart.keys import ASSERTION_TYPE, load_signing_key, public_keyset
from smartapp.smart.pkce import s256_challenge

REDIRECT = "http://app.test/callback"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
SCOPE = "launch openid fhirUser patient/Patient.rs offline_access"


@pytest.fixture
def fake(rsps, ehr_key):
    ehr = FakeEHR(rsps, ehr_key)
    ehr.serve_token_endpoint()
    return ehr


def public_client(**kwargs):
    return SMARTClient(auth=ClientAuthentication(client_id=CLIENT_ID), **kwargs)


def _query(url):
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_authorize_url_carries_every_smart_parameter():
    url = public_client().authorization_url(
        AUTHORIZE,
        redirect_uri=REDIRECT,
        scope=SCOPE,
        state="s" * 43,
        code_verifier=VERIFIER,
        aud=ISS,
        launch="launch-abc",
        nonce="n-1",
    )
    assert url.startswith(AUTHORIZE + "?")
    q = _query(url)
    assert q["response_type"] == "code"
    assert q["client_id"] == CLIENT_ID
    assert q["redirect_uri"] == REDIRECT
    assert q["scope"] == SCOPE
    assert q["state"] == "s" * 43
    assert q["aud"] == ISS  # exactly the FHIR base: no trailing slash added
    assert q["launch"] == "launch-abc"
    assert q["nonce"] == "n-1"
    assert q["code_challenge_method"] == "S256"
    assert q["code_challenge"] == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert "code_verifier" not in q


def test_standalone_authorize_url_has_no_launch_and_no_nonce_without_openid():
    url = public_client().authorization_url(
        AUTHORIZE,
        redirect_uri=REDIRECT,
        scope="launch/patient patient/Patient.rs",
        state="s" * 43,
        code_verifier=VERIFIER,
        aud=ISS,
    )
    q = _query(url)
    assert "launch" not in q and "nonce" not in q


def test_exchange_sends_code_verifier_and_redirect_uri_and_records_granted_scope(fake):
    fake.queue_token(fake.token_response(scope="launch patient/Patient.rs"))
    token = public_client().exchange_code(
        TOKEN, code="code-1", redirect_uri=REDIRECT, code_verifier=VERIFIER, requested_scope=SCOPE
    )
    form = fake.token_requests[0]["form"]
    assert form == {
        "grant_type": "authorization_code",
        "code": "code-1",
        "redirect_uri": REDIRECT,
        "code_verifier": VERIFIER,
        "client_id": CLIENT_ID,  # a public client names itself
    }
    assert "Authorization" not in fake.token_requests[0]["headers"]
    assert token.scope == "launch patient/Patient.rs"  # what was granted, not asked
    assert token.scope_from_server
    assert token.patient == "pat-123" and token.encounter == "enc-456"
    assert token.need_patient_banner is True
    assert token.smart_style_url == "http://ehr.test/smart-style.json"
    assert (token.intent, token.tenant) == ("reconcile-medications", "clinic-a")
    assert token.fhir_context == ({"reference": "DocumentReference/doc-1"},)
    assert token.expires_at is not None


def test_missing_scope_falls_back_to_the_requested_one():
    token = TokenResponse.parse(
        {"access_token": "a", "token_type": "bearer", "expires_in": "60"}, fallback_scope=SCOPE
    )
    assert token.scope == SCOPE
    assert not token.scope_from_server
    assert token.expires_in == 60


def test_token_response_repr_has_no_tokens():
    token = TokenResponse.parse(
        {"access_token": "secret-at", "token_type": "Bearer", "refresh_token": "secret-rt"},
        fallback_scope="x",
    )
    assert "secret-at" not in repr(token) and "secret-rt" not in repr(token)


@pytest.mark.parametrize(
    "body",
    [
        {"token_type": "Bearer"},
        {"access_token": "a", "token_type": "DPoP"},
        {"access_token": "a"},
    ],
)
def test_unusable_token_responses_are_refused(body):
    with pytest.raises(AuthorizationFailed):
        TokenResponse.parse(body, fallback_scope="x")


def test_refused_code_is_a_clear_error_without_the_code(fake):
    fake.queue_token({"error": "invalid_grant", "error_description": "code code-1 expired"}, 400)
    with pytest.raises(AuthorizationFailed) as info:
        public_client().exchange_code(
            TOKEN,
            code="code-1",
            redirect_uri=REDIRECT,
            code_verifier=VERIFIER,
            requested_scope=SCOPE,
        )
    assert "invalid_grant" in info.value.message
    assert "code-1" not in info.value.message


def test_token_endpoint_down_is_temporary(rsps):
    rsps.post(TOKEN, body=requests.ReadTimeout())
    with pytest.raises(TemporaryUpstreamError):
        public_client().exchange_code(
            TOKEN, code="c", redirect_uri=REDIRECT, code_verifier=VERIFIER, requested_scope=SCOPE
        )


def test_token_requests_have_a_timeout(fake, monkeypatch):
    seen = []
    original = requests.Session.request

    def spy(self, method, url, **kwargs):
        seen.append(kwargs.get("timeout"))
        return original(self, method, url, **kwargs)

    monkeypatch.setattr(requests.Session, "request", spy)
    fake.queue_token(fake.token_response())
    fake.queue_token(fake.token_response())
    client = public_client(timeout=(2, 9))
    client.exchange_code(
        TOKEN, code="c", redirect_uri=REDIRECT, code_verifier=VERIFIER, requested_scope=SCOPE
    )
    client.refresh(TOKEN, refresh_token="rt", current_scope=SCOPE)
    assert seen == [(2, 9), (2, 9)]


def test_client_secret_basic(fake):
    fake.queue_token(fake.token_response())
    client = SMARTClient(
        auth=ClientAuthentication(
            client_id=CLIENT_ID, method="client_secret_basic", client_secret="s3cr:et/+"
        )
    )
    client.exchange_code(
        TOKEN, code="c", redirect_uri=REDIRECT, code_verifier=VERIFIER, requested_scope=SCOPE
    )
    request = fake.token_requests[0]
    scheme, _, encoded = request["headers"]["Authorization"].partition(" ")
    assert scheme == "Basic"
    # RFC 6749 §2.3.1: form-urlencoded, then Basic.
    assert base64.b64decode(encoded).decode() == "smartapp:s3cr%3Aet%2F%2B"
    assert "client_secret" not in request["form"]


def test_private_key_jwt(fake, tmp_path):
    path = tmp_path / "app.pem"
    path.write_bytes(RSAKey.generate_key(2048).as_pem(private=True))
    key = load_signing_key(path)
    fake.queue_token(fake.token_response())
    client = SMARTClient(
        auth=ClientAuthentication(client_id=CLIENT_ID, method="private_key_jwt", signing_key=key)
    )
    client.exchange_code(
        TOKEN, code="c", redirect_uri=REDIRECT, code_verifier=VERIFIER, requested_scope=SCOPE
    )
    form = fake.token_requests[0]["form"]
    assert form["client_assertion_type"] == ASSERTION_TYPE
    decoded = jwt.decode(form["client_assertion"], public_keyset(key), algorithms=["RS384"])
    assert decoded.header["kid"] == key.kid
    assert decoded.claims["iss"] == decoded.claims["sub"] == CLIENT_ID
    assert decoded.claims["aud"] == TOKEN
    assert decoded.claims["exp"] - decoded.claims["iat"] <= 300
    assert "Authorization" not in fake.token_requests[0]["headers"]


def test_refresh_keeps_the_rotated_refresh_token(fake):
    fake.queue_token(
        {"access_token": "at-2", "token_type": "Bearer", "expires_in": 600, "refresh_token": "rt-2"}
    )
    token = public_client().refresh(TOKEN, refresh_token="rt-1", current_scope=SCOPE)
    form = fake.token_requests[0]["form"]
    assert form["grant_type"] == "refresh_token"
    assert form["refresh_token"] == "rt-1"
    assert form["client_id"] == CLIENT_ID
    assert token.access_token == "at-2"
    assert token.refresh_token == "rt-2"
    assert token.scope == SCOPE  # no scope in the response: the current grant stands


def test_refresh_keeps_the_old_refresh_token_when_none_comes_back(fake):
    fake.queue_token({"access_token": "at-2", "token_type": "Bearer", "expires_in": 600})
    token = public_client().refresh(TOKEN, refresh_token="rt-1", current_scope=SCOPE)
    assert token.refresh_token == "rt-1"


def test_refused_refresh(fake):
    fake.queue_token({"error": "invalid_grant"}, 400)
    with pytest.raises(RefreshRefused):
        public_client().refresh(TOKEN, refresh_token="rt-1", current_scope=SCOPE)


def test_refresh_against_a_failing_server_is_temporary(rsps):
    rsps.post(TOKEN, status=503, body="busy")
    with pytest.raises(TemporaryUpstreamError):
        public_client().refresh(TOKEN, refresh_token="rt-1", current_scope=SCOPE)


def test_pkce_challenge_helper_matches_what_authlib_sends():
    url = public_client().authorization_url(
        AUTHORIZE, redirect_uri=REDIRECT, scope="x", state="s", code_verifier=VERIFIER, aud=ISS
    )
    assert _query(url)["code_challenge"] == s256_challenge(VERIFIER)
