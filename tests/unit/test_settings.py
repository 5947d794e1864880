"""Unit: settings hygiene — no secret in a repr, zero values refused by name, one
environment for every command, and a start-up line saying which engine serves what."""

from __future__ import annotations

import argparse
import io
import logging

import pytest

from smartapp.config import ConfigError, read_environment
from smartapp.siteconfig import load_site_config
from smartapp.suggestions.registry import LLMSettings, SuggestionService
from tests.conftest import make_settings

SECRETS = {
    "SMARTAPP_SECRET_KEY": "secret-key-value-123",
    "SMARTAPP_CLIENT_SECRET": "client-secret-value-456",
    "SMARTAPP_ADMIN_TOKEN": "admin-token-value-789",
    "SMARTAPP_LLM_API_KEY": "llm-key-value-000",
    "SMARTAPP_DATABASE_URL": "postgresql://app:db-password-111@db.example/smartapp",
}


def test_repr_never_shows_a_secret(tmp_path):
    settings = make_settings(tmp_path, **SECRETS)
    text = repr(settings)
    for value in SECRETS.values():
        assert value not in text
    assert "db-password-111" not in text and "db.example" in text
    assert "secret_key='***'" in text and "allowed_issuers=" in text
    assert str(settings) == text


@pytest.mark.parametrize("name", ["SMARTAPP_SNAPSHOT_TTL", "SMARTAPP_MAX_PAGES"])
def test_zero_is_refused_naming_the_variable(tmp_path, name):
    with pytest.raises(ConfigError, match=f"{name} must be at least 1 .*got 0"):
        make_settings(tmp_path, **{name: "0"})


def test_every_command_reads_dotenv_under_the_environment(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("SMARTAPP_CONFIG=from-file\nSMARTAPP_LLM_MODEL=m\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMARTAPP_LLM_MODEL", "from-env")
    env = read_environment()
    assert env["SMARTAPP_CONFIG"] == "from-file"
    assert env["SMARTAPP_LLM_MODEL"] == "from-env"  # the environment wins, as for serve


def test_evaluate_reads_dotenv(tmp_path, monkeypatch):
    from smartapp.suggestions.evaluate import run_cli

    (tmp_path / ".env").write_text(f"SMARTAPP_CONFIG={tmp_path / 'missing.toml'}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SMARTAPP_CONFIG", raising=False)
    args = argparse.Namespace(config=None, cohort="sandbox", site=None, as_of=None)
    err = io.StringIO()
    assert run_cli(args, out=io.StringIO(), err=err) == 2
    assert "missing.toml" in err.getvalue()  # the .env's SMARTAPP_CONFIG was read


def test_start_up_says_which_engine_serves_each_kind_and_warns_of_an_unused_llm(caplog):
    service = SuggestionService(
        load_site_config(None), LLMSettings.from_values("http://llm.test/v1", "m", None)
    )
    with caplog.at_level(logging.INFO, logger="smartapp.suggestions.registry"):
        service.announce()
    messages = [r.getMessage() for r in caplog.records]
    assert any("problem_summary=builtin" in m for m in messages)
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning and "no kind uses it" in warning[0].getMessage()
