"""Unit: settings hygiene — no secret in a repr, zero values refused by name, one
environment for every command, and a start-up line saying which engine serves what."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os

import pytest

from smartapp.config import ConfigError, read_environment
from smartapp.siteconfig import load_site_config
from smartapp.suggestions.registry import LLMSettings, SuggestionService
from tests.conftest import make_settings
from tests.unit.suggestions.conftest import PATIENTS

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


# One `.env` configures every command alike (`smartapp.siteconfig.read_sources`): each
# command below is run from a directory whose `.env` names a site file that shows the
# allergies alone, with nothing of the kind in the process environment.

ONLY_ALLERGIES = '[suggestions]\nkinds = ["allergies"]\n'


def _dotenv_only(tmp_path, monkeypatch, **values: str):
    """A working directory whose `.env` holds `values` (and a site file), and an environment
    holding no SMARTAPP_* variable: whatever the command sees came from the `.env`."""
    for name in [n for n in os.environ if n.startswith("SMARTAPP_")]:
        monkeypatch.delenv(name)
    site = tmp_path / "site.toml"
    site.write_text(ONLY_ALLERGIES, encoding="utf-8")
    lines = {"SMARTAPP_CONFIG": str(site), **values}
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    monkeypatch.chdir(tmp_path)
    return site


def test_serve_reads_dotenv(tmp_path, monkeypatch, capsys):
    from smartapp import cli, serving

    site = _dotenv_only(
        tmp_path,
        monkeypatch,
        SMARTAPP_INSTANCE_PATH=str(tmp_path / "instance"),
        SMARTAPP_ALLOWED_ISSUERS="https://ehr.example.org/fhir",
        SMARTAPP_SECRET_KEY="dotenv-secret-key-for-serve",
        SMARTAPP_PUBLIC_URL="https://app.example.org",
        SMARTAPP_DATABASE_URL=f"sqlite:///{tmp_path / 'serve.db'}",
        SMARTAPP_MIGRATE_ON_START="true",
    )
    served = []

    class NoServer:
        """In place of waitress: records the app `serve` built, serves nothing."""

        def __init__(self, app, **_options):
            served.append(app)

        def print_listen(self, _format: str) -> None:
            pass

    monkeypatch.setattr(serving, "create_server", NoServer)
    # Stopped at once, as by SIGTERM once it serves: the closing is the command's own.
    monkeypatch.setattr(serving, "run_until_stopped", lambda _server, *, on_stopped: on_stopped())
    assert cli.main(["serve", "--no-worker", "--port", "0"]) == 0
    [app] = served
    try:
        settings = app.config["SMARTAPP_SETTINGS"]
        assert settings.site_config_path == site
        assert settings.allowed_issuers == ("https://ehr.example.org/fhir",)
        engines = app.extensions["smartapp.engines"]
        assert [k.kind for k in engines.config.for_issuer(None).kinds] == ["allergies"]
    finally:
        app.extensions["smartapp.db"].dispose()


def test_evaluate_reads_the_site_file_dotenv_names(tmp_path, monkeypatch, capsys):
    from smartapp.cli import main

    _dotenv_only(tmp_path, monkeypatch)
    assert main(["evaluate", "--cohort", str(PATIENTS), "--json", "--as-of", "2026-11-23"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["kind"] for row in report["kinds"]] == ["allergies"]


def test_draft_reads_the_site_file_dotenv_names(tmp_path, monkeypatch, capsys):
    from smartapp.cli import main

    _dotenv_only(tmp_path, monkeypatch)
    chart = next(iter(sorted(PATIENTS.glob("*.json"))))
    assert main(["draft", "--chart", str(chart), "--json", "--as-of", "2026-11-23"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["suggestions"] and {s["kind"] for s in record["suggestions"]} == {"allergies"}
