"""Unit: the SMART client follows an EHR's redirects only within its origin (issue 11, finding 4).

An allowed EHR whose `.well-known` redirected to another host used to send the clinician to
that host's sign-in page; the JWKS and token endpoint must not be redirected away either.
"""

from __future__ import annotations

import pytest
import requests
from smart_fakes import CLIENT_ID, ISS, JWKS, TOKEN, load_fixture

from smartapp.errors import AuthorizationFailed
from smartapp.smart.client import ClientAuthentication, RefreshRefused, SMARTClient
from smartapp.smart.discovery import DiscoveryError, discover
from smartapp.smart.idtoken import IDTokenInvalid, JWKSCache

WELL_KNOWN = f"{ISS}/.well-known/smart-configuration"
EVIL = "https://evil.example/.well-known/smart-configuration"


def _evil_config() -> dict[str, object]:
    config = load_fixture("smart-configuration.json")
    config["authorization_endpoint"] = "https://evil.example/login"
    return config


def test_discovery_refuses_a_redirect_to_another_host(rsps):
    rsps.get(WELL_KNOWN, status=302, headers={"Location": EVIL})
    rsps.get(EVIL, json=_evil_config())
    with pytest.raises(DiscoveryError, match="another server") as info:
        discover(ISS, http=requests.Session(), timeout=2)
    assert "evil.example" in info.value.message
    assert [c.request.url for c in rsps.calls] == [WELL_KNOWN]


@pytest.mark.parametrize(
    "location",
    [
        "//evil.example/.well-known/smart-configuration",  # scheme-relative
        "https://ehr.test/fhir/.well-known/smart-configuration",  # same host, other scheme
        "http://ehr.test:8443/fhir/.well-known/smart-configuration",  # same host, other port
    ],
)
def test_discovery_refuses_every_other_origin(rsps, location):
    rsps.get(WELL_KNOWN, status=301, headers={"Location": location})
    with pytest.raises(DiscoveryError, match="another server"):
        discover(ISS, http=requests.Session(), timeout=2)
    assert len(rsps.calls) == 1


def test_discovery_follows_a_redirect_within_the_issuers_origin(rsps):
    moved = "http://ehr.test/fhir/r4/.well-known/smart-configuration"
    rsps.get(
        WELL_KNOWN, status=307, headers={"Location": "/fhir/r4/.well-known/smart-configuration"}
    )
    rsps.get(moved, json=load_fixture("smart-configuration.json"))
    config = discover(ISS, http=requests.Session(), timeout=2)
    assert config.token_endpoint == TOKEN


def test_discovery_gives_up_on_a_redirect_loop(rsps):
    rsps.get(WELL_KNOWN, status=302, headers={"Location": WELL_KNOWN})
    with pytest.raises(DiscoveryError, match="redirects in a row"):
        discover(ISS, http=requests.Session(), timeout=2)


def test_launch_never_sends_the_browser_to_the_redirected_host(client, rsps):
    rsps.get(WELL_KNOWN, status=302, headers={"Location": EVIL})
    rsps.get(EVIL, json=_evil_config())
    response = client.get("/launch", query_string={"iss": ISS, "launch": "l"})
    assert response.status_code >= 400
    assert "evil.example/login" not in (response.headers.get("Location") or "")
    assert all("evil.example" not in c.request.url for c in rsps.calls)


def test_jwks_redirect_to_another_host_is_refused(rsps):
    rsps.get(JWKS, status=302, headers={"Location": "https://evil.example/jwks"})
    rsps.get("https://evil.example/jwks", json={"keys": []})
    with pytest.raises(IDTokenInvalid, match="redirect"):
        JWKSCache().get(JWKS, http=requests.Session(), timeout=2)
    assert len(rsps.calls) == 1


def _client() -> SMARTClient:
    return SMARTClient(auth=ClientAuthentication(client_id=CLIENT_ID))


def test_token_request_is_never_redirected(rsps):
    # Even a same-origin 307 would re-send the code and verifier: none is followed.
    rsps.post(TOKEN, status=307, headers={"Location": "https://evil.example/token"})
    rsps.post(TOKEN + "2", status=200, json={"access_token": "x", "token_type": "Bearer"})
    with pytest.raises(AuthorizationFailed, match="redirect"):
        _client().exchange_code(
            TOKEN,
            code="c",
            redirect_uri="http://app.test/callback",
            code_verifier="v" * 43,
            requested_scope="openid",
        )
    assert [c.request.url for c in rsps.calls] == [TOKEN]


def test_refresh_is_never_redirected(rsps):
    rsps.post(TOKEN, status=308, headers={"Location": "/auth/token2"})
    with pytest.raises(RefreshRefused):
        _client().refresh(TOKEN, refresh_token="rt", current_scope="openid")
    assert len(rsps.calls) == 1
