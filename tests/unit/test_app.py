"""Unit: the app factory, configuration errors and response headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartapp.config import ConfigError, Settings


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_frame_ancestors_lists_allowed_ehr_origins(client):
    csp = client.get("/healthz").headers["Content-Security-Policy"]
    assert "frame-ancestors 'self' http://ehr.test" in csp


def test_unknown_api_route_is_json_error(client):
    response = client.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_bad_issuer_names_the_variable(tmp_path: Path):
    with pytest.raises(ConfigError, match="SMARTAPP_ALLOWED_ISSUERS"):
        Settings.from_env(
            {"SMARTAPP_INSTANCE_PATH": str(tmp_path), "SMARTAPP_ALLOWED_ISSUERS": "ehr.example.org"}
        )


def test_secret_key_is_generated_once(tmp_path: Path):
    env = {"SMARTAPP_INSTANCE_PATH": str(tmp_path)}
    first = Settings.from_env(env).secret_key
    assert first == Settings.from_env(env).secret_key
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
