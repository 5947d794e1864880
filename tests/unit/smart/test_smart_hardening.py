"""Unit: the launch's hardening (issue 11): the public URL, a forged callback, the pending
rows, logout. The authorization server is faked with `responses`."""

from __future__ import annotations

import dataclasses

import pytest
from smart_fakes import ISS, authorize_params, make_settings

from smartapp import create_app
from smartapp.config import ConfigError
from smartapp.smart.views import redirect_uri

# -- finding 9: the redirect URI never comes from the Host header -------------------------


def test_production_refuses_to_start_without_a_public_url(tmp_path):
    settings = make_settings(tmp_path, SMARTAPP_PUBLIC_URL="")
    with pytest.raises(ConfigError, match="SMARTAPP_PUBLIC_URL is not set"):
        create_app(settings)


def test_a_malformed_public_url_stops_start_up(tmp_path):
    with pytest.raises(ConfigError, match="SMARTAPP_PUBLIC_URL="):
        make_settings(tmp_path, SMARTAPP_PUBLIC_URL="smartapp.hospital.org")


def test_the_sandbox_may_start_without_a_public_url(tmp_path):
    from smartapp.config import Settings

    settings = Settings.from_env(
        {
            "SMARTAPP_INSTANCE_PATH": str(tmp_path / "instance"),
            "SMARTAPP_SECRET_KEY": "test-secret-key-not-for-production",
            "SMARTAPP_DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
        },
        sandbox_issuer="http://127.0.0.1:8400/fhir",
    )
    app = create_app(settings)
    try:
        with app.test_request_context("/launch", base_url="http://127.0.0.1:8401"):
            assert redirect_uri(settings) == "http://127.0.0.1:8401/callback"
    finally:
        app.extensions["smartapp.db"].dispose()


def test_a_forged_host_header_does_not_choose_the_redirect_uri(client, ehr):
    response = client.get(
        "/launch", query_string={"iss": ISS, "launch": "l"}, headers={"Host": "evil.example"}
    )
    assert authorize_params(response)["redirect_uri"] == "http://localhost/callback"


def test_outside_the_sandbox_the_host_header_is_never_used(app):
    # Even if start-up were bypassed, the request's Host is not a fallback.
    settings = dataclasses.replace(app.extensions["smartapp.settings"], public_url=None)
    with app.test_request_context("/launch", base_url="http://evil.example"):
        with pytest.raises(ConfigError):
            redirect_uri(settings)
