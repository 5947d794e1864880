"""Unit: SMART configuration discovery (.well-known, CapabilityStatement fallback, refusals)."""

from __future__ import annotations

import pytest
import requests
from smart_fakes import AUTHORIZE, ISS, JWKS, TOKEN, load_fixture

from smartapp.errors import TemporaryUpstreamError
from smartapp.smart.discovery import DiscoveryCache, DiscoveryError, discover

WELL_KNOWN = f"{ISS}/.well-known/smart-configuration"


def _discover(**kwargs):
    return discover(ISS, http=requests.Session(), timeout=(1, 2), **kwargs)


def test_well_known_gives_the_endpoints_and_capabilities(rsps):
    rsps.get(WELL_KNOWN, json=load_fixture("smart-configuration.json"))
    config = _discover()
    assert config.authorization_endpoint == AUTHORIZE
    assert config.token_endpoint == TOKEN
    assert config.jwks_uri == JWKS
    assert config.issuer == ISS
    assert "S256" in config.code_challenge_methods_supported
    assert "launch-ehr" in config.capabilities
    assert config.source == "well-known"
    assert rsps.calls[0].request.headers["Accept"] == "application/json"


def test_trailing_slash_on_iss_is_normalised(rsps):
    rsps.get(WELL_KNOWN, json=load_fixture("smart-configuration.json"))
    config = discover(ISS + "/", http=requests.Session(), timeout=2)
    assert config.token_endpoint == TOKEN


def test_falls_back_to_capability_statement_oauth_uris(rsps):
    rsps.get(WELL_KNOWN, status=404)
    rsps.get(f"{ISS}/metadata", json=load_fixture("capability-statement-oauth-uris.json"))
    config = _discover()
    assert config.authorization_endpoint == "http://ehr.test/legacy/authorize"
    assert config.token_endpoint == "http://ehr.test/legacy/token"
    assert config.source == "capability-statement"
    assert config.jwks_uri is None


def test_no_configuration_anywhere_is_a_clear_error(rsps):
    rsps.get(WELL_KNOWN, status=404)
    rsps.get(f"{ISS}/metadata", json={"resourceType": "CapabilityStatement", "rest": []})
    with pytest.raises(DiscoveryError, match="publishes no SMART configuration"):
        _discover()


@pytest.mark.parametrize("methods", [None, [], ["plain"]])
def test_refuses_a_server_without_s256(rsps, methods):
    config = load_fixture("smart-configuration.json")
    if methods is None:
        del config["code_challenge_methods_supported"]
    else:
        config["code_challenge_methods_supported"] = methods
    rsps.get(WELL_KNOWN, json=config)
    with pytest.raises(DiscoveryError, match="S256"):
        _discover()


@pytest.mark.parametrize(
    ("software", "accepted"), [("athenaOne FHIR", True), ("HAPI FHIR Server", False)]
)
def test_unlisted_pkce_methods_are_s256_only_for_a_family_known_to_omit_them(
    rsps, software, accepted
):
    config = load_fixture("smart-configuration.json")
    del config["code_challenge_methods_supported"]
    rsps.get(WELL_KNOWN, json=config)
    rsps.get(
        f"{ISS}/metadata",
        json={"resourceType": "CapabilityStatement", "software": {"name": software}},
    )
    if accepted:
        assert _discover().code_challenge_methods_supported == ("S256",)
    else:
        with pytest.raises(DiscoveryError, match="S256"):
            _discover()


def test_an_athena_server_listing_only_plain_is_still_refused(rsps):
    config = load_fixture("smart-configuration.json")
    config["code_challenge_methods_supported"] = ["plain"]
    rsps.get(WELL_KNOWN, json=config)
    rsps.get(f"{ISS}/metadata", json={"resourceType": "CapabilityStatement", "publisher": "athena"})
    with pytest.raises(DiscoveryError, match="S256"):
        _discover()


def test_refuses_missing_token_endpoint(rsps):
    config = load_fixture("smart-configuration.json")
    del config["token_endpoint"]
    rsps.get(WELL_KNOWN, json=config)
    with pytest.raises(DiscoveryError, match="token_endpoint"):
        _discover()


def test_https_issuer_may_not_send_the_app_to_http_endpoints(rsps):
    config = load_fixture("smart-configuration.json")
    rsps.get("https://secure.test/fhir/.well-known/smart-configuration", json=config)
    with pytest.raises(DiscoveryError, match="non-https"):
        discover("https://secure.test/fhir", http=requests.Session(), timeout=2)


def test_server_down_is_temporary(rsps):
    rsps.get(WELL_KNOWN, body=requests.ConnectTimeout())
    with pytest.raises(TemporaryUpstreamError):
        _discover()


def test_every_request_has_a_timeout(rsps):
    rsps.get(WELL_KNOWN, status=404)
    rsps.get(f"{ISS}/metadata", json=load_fixture("capability-statement-oauth-uris.json"))
    seen = []
    session = requests.Session()
    original = session.request

    def spy(method, url, **kwargs):
        seen.append(kwargs.get("timeout"))
        return original(method, url, **kwargs)

    session.request = spy  # type: ignore[method-assign]
    discover(ISS, http=session, timeout=(3, 7))
    assert seen == [(3, 7), (3, 7)]


def test_cache_answers_repeat_discovery_without_a_request(rsps):
    rsps.get(WELL_KNOWN, json=load_fixture("smart-configuration.json"))
    cache = DiscoveryCache(ttl_seconds=300)
    first = _discover(cache=cache)
    second = _discover(cache=cache)
    assert first is second
    assert len(rsps.calls) == 1


def test_cache_expires(rsps):
    rsps.get(WELL_KNOWN, json=load_fixture("smart-configuration.json"))
    cache = DiscoveryCache(ttl_seconds=0)
    _discover(cache=cache)
    _discover(cache=cache)
    assert len(rsps.calls) == 2
