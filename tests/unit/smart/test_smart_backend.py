"""Unit: SMART Backend Services — discovery of the token endpoint, client_credentials with a
private_key_jwt assertion the app's public key verifies (HTTP faked with `responses`)."""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest
import responses
from joserfc import jwt
from joserfc.jwk import RSAKey

from smartapp.errors import TemporaryUpstreamError
from smartapp.smart.backend import (
    BackendServicesClient,
    BackendServicesError,
    parse_backend_configuration,
)
from smartapp.smart.keys import ASSERTION_TYPE, load_signing_key, public_keyset

ISS = "https://ehr.test/fhir"
TOKEN_URL = "https://ehr.test/auth/token"
WELL_KNOWN = f"{ISS}/.well-known/smart-configuration"


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "app.pem"
    path.write_bytes(RSAKey.generate_key(2048).as_pem(private=True))
    return load_signing_key(path)


@pytest.fixture
def client(signing_key):
    return BackendServicesClient(client_id="smartapp", signing_key=signing_key)


def configuration(**extra):
    return {
        "token_endpoint": TOKEN_URL,
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "capabilities": ["permission-v2", "client-confidential-asymmetric"],
        **extra,
    }


@responses.activate
def test_system_token_is_asked_with_a_verifiable_assertion_and_v2_scopes(client, signing_key):
    responses.get(WELL_KNOWN, json=configuration())
    responses.post(
        TOKEN_URL,
        json={"access_token": "t1", "token_type": "bearer", "expires_in": 300, "scope": "x"},
    )
    config = client.discover(ISS)
    scope = config.system_scope(("Encounter", "DocumentReference"))
    token = client.system_token(config, scope=scope)

    assert scope == "system/Encounter.rs system/DocumentReference.rs"
    assert token.access_token == "t1"
    form = parse_qs(responses.calls[1].request.body)
    assert form["grant_type"] == ["client_credentials"]
    assert form["scope"] == [scope]
    assert form["client_assertion_type"] == [ASSERTION_TYPE]
    claims = jwt.decode(
        form["client_assertion"][0], public_keyset(signing_key), algorithms=["RS384"]
    ).claims
    assert claims["iss"] == claims["sub"] == "smartapp"
    assert claims["aud"] == TOKEN_URL
    assert claims["exp"] - claims["iat"] <= 300


def test_a_v1_server_gets_read_scopes():
    config = parse_backend_configuration(ISS, configuration(capabilities=["permission-v1"]))
    assert config.system_scope(("Encounter",)) == "system/Encounter.read"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"grant_types_supported": ["authorization_code"]}, "client_credentials"),
        ({"token_endpoint_auth_methods_supported": ["client_secret_basic"]}, "private_key_jwt"),
        ({"token_endpoint": "http://ehr.test/auth/token"}, "non-https"),
        ({"token_endpoint": None}, "no token_endpoint"),
    ],
)
def test_a_server_without_backend_services_is_refused_with_the_reason(change, message):
    with pytest.raises(BackendServicesError, match=message):
        parse_backend_configuration(ISS, configuration(**change))


@responses.activate
def test_discovery_redirected_to_another_origin_is_refused(client):
    responses.get(WELL_KNOWN, status=302, headers={"Location": "https://evil.test/conf"})
    with pytest.raises(BackendServicesError, match="redirected"):
        client.discover(ISS)
    assert len(responses.calls) == 1


@responses.activate
def test_token_endpoint_redirect_is_not_followed(client):
    responses.post(TOKEN_URL, status=307, headers={"Location": "https://evil.test/token"})
    config = parse_backend_configuration(ISS, configuration())
    with pytest.raises(BackendServicesError, match="redirect"):
        client.system_token(config, scope="system/Encounter.rs")
    assert len(responses.calls) == 1


@responses.activate
def test_refused_token_names_the_oauth_error_only(client):
    responses.post(
        TOKEN_URL,
        status=401,
        json={"error": "invalid_client", "error_description": "key abc for patient 42"},
    )
    config = parse_backend_configuration(ISS, configuration())
    with pytest.raises(BackendServicesError) as caught:
        client.system_token(config, scope="system/Encounter.rs")
    assert "invalid_client" in caught.value.message
    assert "patient 42" not in caught.value.message


@responses.activate
def test_token_endpoint_unavailable_is_temporary(client):
    responses.post(TOKEN_URL, status=503)
    config = parse_backend_configuration(ISS, configuration())
    with pytest.raises(TemporaryUpstreamError):
        client.system_token(config, scope="system/Encounter.rs")
