"""Unit: settings hygiene — no secret in a repr or a dump, each bad value refused by name
with where it came from, each value's source, one environment for every command, and a
start-up line saying which engine serves what."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re

import pytest
from pydantic import ValidationError

from smartapp.config import VARIABLES, ConfigError, Settings, read_environment
from smartapp.siteconfig import load_site_config, read_sources
from smartapp.suggestions.registry import LLMSettings, SuggestionService
from tests.conftest import SANDBOX_ISS as ISS
from tests.conftest import make_settings
from tests.unit.suggestions.conftest import PATIENTS

SECRETS = {
    "SMARTAPP_SECRET_KEY": "secret-key-value-123",
    "SMARTAPP_CLIENT_SECRET": "client-secret-value-456",
    "SMARTAPP_ADMIN_TOKEN": "admin-token-value-789",
    "SMARTAPP_LLM_API_KEY": "llm-key-value-000",
    "SMARTAPP_DATABASE_URL": "postgresql://app:db-password-111@db.example/smartapp",
}


SECRET_URLS = {
    "SMARTAPP_REDIS_URL": "redis://:redis-password-222@cache.example:6379/0",
    "SMARTAPP_LLM_BASE_URL": "https://llm:llm-proxy-password-333@llm.example/v1",
}
SECRET_VALUES = [
    "secret-key-value-123",
    "client-secret-value-456",
    "admin-token-value-789",
    "llm-key-value-000",
    "db-password-111",
    "previous-key-value-444",
    "redis-password-222",
    "llm-proxy-password-333",
]


def test_repr_never_shows_a_secret(tmp_path):
    settings = make_settings(
        tmp_path, **SECRETS, **SECRET_URLS, SMARTAPP_PREVIOUS_SECRET_KEYS="previous-key-value-444"
    )
    text = repr(settings)
    shown = {
        "repr": text,
        "str": str(settings),
        "model_dump": repr(settings.model_dump()),
        "model_dump_json": settings.model_dump_json(),
        "described": repr(settings.described()),
    }
    for where, output in shown.items():
        for value in SECRET_VALUES:
            assert value not in output, (where, value)
    assert "db.example" in text and "cache.example" in text and "llm.example" in text
    assert "secret_key='***'" in text and "allowed_issuers=" in text
    assert str(settings) == text
    assert settings.model_dump()["client_secret"] == "***"
    # The attributes themselves are what the app uses: plain strings.
    assert settings.secret_key == "secret-key-value-123"
    assert settings.redis_url == SECRET_URLS["SMARTAPP_REDIS_URL"]


def test_check_shows_a_secret_as_set_and_never_its_value(tmp_path):
    settings = make_settings(tmp_path, **SECRETS)
    values = {v.name: v for v in settings.described()}
    assert values["SMARTAPP_CLIENT_SECRET"].value == "(secret, set)"
    assert values["SMARTAPP_CLIENT_SECRET"].secret
    assert values["SMARTAPP_LLM_API_KEY"].value == "(secret, set)"
    assert values["SMARTAPP_DATABASE_URL"].value == "postgresql://app:***@db.example/smartapp"
    assert values["SMARTAPP_PREVIOUS_SECRET_KEYS"].value == "(unset)"
    assert values["SMARTAPP_MAX_PAGES"].value == "20"
    assert set(values) == set(VARIABLES.values())


@pytest.mark.parametrize("name", ["SMARTAPP_SNAPSHOT_TTL", "SMARTAPP_MAX_PAGES"])
def test_zero_is_refused_naming_the_variable(tmp_path, name):
    with pytest.raises(ConfigError, match=f"{name} must be at least 1 .*got 0"):
        make_settings(tmp_path, **{name: "0"})


# Each validator's message: the variable, what is wrong, what it should be, and where the
# value came from; a ConfigError, never pydantic's ValidationError.
BAD_VALUES = [
    ("SMARTAPP_MAX_PAGES", "ten", r"SMARTAPP_MAX_PAGES='ten' is not a whole number"),
    ("SMARTAPP_PROXY_HOPS", "-1", r"SMARTAPP_PROXY_HOPS must be at least 0 \(reverse proxies"),
    ("SMARTAPP_LLM_CONCURRENCY", "0", r"SMARTAPP_LLM_CONCURRENCY must be at least 1 .*got 0"),
    ("SMARTAPP_PHI_RETENTION_DAYS", "0", r"SMARTAPP_PHI_RETENTION_DAYS must be at least 1"),
    ("SMARTAPP_FHIR_DEADLINE", "0", r"SMARTAPP_FHIR_DEADLINE must be at least 1"),
    ("SMARTAPP_FHIR_MAX_MB", "0", r"SMARTAPP_FHIR_MAX_MB must be at least 1"),
    ("SMARTAPP_STORE_WAIT_SECONDS", "0", r"SMARTAPP_STORE_WAIT_SECONDS must be at least 1"),
    ("SMARTAPP_OUTBOX_RETRY_SECONDS", "0", r"SMARTAPP_OUTBOX_RETRY_SECONDS must be at least 1"),
    ("SMARTAPP_PREFETCH_CHART", "maybe", r"SMARTAPP_PREFETCH_CHART='maybe': use true or false"),
    ("SMARTAPP_MIGRATE_ON_START", "2", r"SMARTAPP_MIGRATE_ON_START='2': use true or false"),
    ("SMARTAPP_SIGNIN_RATE_LIMIT", "lots", r"SMARTAPP_SIGNIN_RATE_LIMIT='lots' is not a rate"),
    ("SMARTAPP_ADMIN_AUTH_RATE_LIMIT", "x", r"SMARTAPP_ADMIN_AUTH_RATE_LIMIT='x' is not a rate"),
    ("SMARTAPP_ALLOWED_ISSUERS", "ehr/fhir", r"SMARTAPP_ALLOWED_ISSUERS: 'ehr/fhir' is not an"),
    ("SMARTAPP_PUBLIC_URL", "app.example", r"SMARTAPP_PUBLIC_URL='app.example' is not an abs"),
    ("SMARTAPP_LOG_FORMAT", "XML", r"SMARTAPP_LOG_FORMAT='xml': use json or text"),
    ("SMARTAPP_REDIS_URL", "http://cache", r"SMARTAPP_REDIS_URL must be a redis:// or rediss"),
    ("SMARTAPP_PRIVATE_KEY", "/no/key.pem", r"SMARTAPP_PRIVATE_KEY='/no/key.pem': no such file"),
    ("SMARTAPP_CONFIG", "/no/site.toml", r"SMARTAPP_CONFIG='/no/site.toml': no such file"),
    ("SMARTAPP_CDS_CLIENTS", "/no/cds.toml", r"SMARTAPP_CDS_CLIENTS='/no/cds.toml': no such"),
    ("SMARTAPP_LAUNCH_JSON", "/no/launch.json", r"/no/launch.json not found"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_each_bad_value_stops_start_up_naming_variable_fix_and_source(
    tmp_path, name, value, message
):
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, **{name: value})
    assert re.search(message, str(caught.value))
    assert str(caught.value).endswith("(set in the environment)")
    assert not isinstance(caught.value.__cause__, ValidationError)


def test_every_bad_value_is_named_at_once(tmp_path):
    with pytest.raises(ConfigError) as caught:
        make_settings(tmp_path, SMARTAPP_MAX_PAGES="0", SMARTAPP_LOG_FORMAT="xml")
    lines = str(caught.value).splitlines()
    assert [line.split(" ")[0].split("=")[0] for line in lines] == [
        "SMARTAPP_MAX_PAGES",
        "SMARTAPP_LOG_FORMAT",
    ]


def test_a_bad_value_from_dotenv_names_the_file(tmp_path, monkeypatch):
    dotenv = tmp_path / ".env"
    dotenv.write_text("SMARTAPP_MAX_PAGES=0\n", encoding="utf-8")
    monkeypatch.delenv("SMARTAPP_MAX_PAGES", raising=False)
    monkeypatch.setenv("SMARTAPP_INSTANCE_PATH", str(tmp_path / "instance"))
    with pytest.raises(ConfigError, match=rf"got 0 \(set in {re.escape(str(dotenv))}\)$"):
        Settings.from_env(dotenv_path=dotenv)


def test_each_value_knows_its_source(tmp_path, monkeypatch):
    for name in [n for n in os.environ if n.startswith("SMARTAPP_")]:
        monkeypatch.delenv(name)
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "SMARTAPP_MAX_PAGES=5\nSMARTAPP_LLM_MODEL=from-file\nSMARTAPP_PROXY_HOPS=\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("SMARTAPP_INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.setenv("SMARTAPP_LLM_MODEL", "from-env")
    settings = Settings.from_env(dotenv_path=dotenv)
    instance = tmp_path / "instance"
    assert settings.max_pages == 5
    assert settings.source_of("SMARTAPP_MAX_PAGES") == f".env ({dotenv})"
    # The environment beats the .env file, name by name.
    assert settings.llm_model == "from-env"
    assert settings.source_of("SMARTAPP_LLM_MODEL") == "environment"
    assert settings.source_of("SMARTAPP_INSTANCE_PATH") == "environment"
    # A blank value is unset: the default serves.
    assert settings.proxy_hops == 0 and settings.source_of("SMARTAPP_PROXY_HOPS") == "default"
    assert settings.source_of("snapshot_ttl_seconds") == "default"  # a field name works too
    assert settings.source_of("SMARTAPP_SECRET_KEY") == f"instance ({instance / 'secret_key'})"
    assert settings.source_of("SMARTAPP_CLIENT_ID").startswith("launch.json (")
    assert settings.source_of("SMARTAPP_DATABASE_URL") == "default"
    with pytest.raises(KeyError):
        settings.source_of("SMARTAPP_NO_SUCH_THING")


def test_sandbox_defaults_say_so(tmp_path):
    settings = Settings.from_env(
        {"SMARTAPP_INSTANCE_PATH": str(tmp_path / "i")}, sandbox_issuer="http://localhost:1/fhir"
    )
    assert settings.source_of("SMARTAPP_ALLOWED_ISSUERS") == "sandbox"
    assert settings.source_of("SMARTAPP_ADMIN_USERS") == "sandbox"
    assert settings.source_of("SMARTAPP_MIGRATE_ON_START") == "sandbox"
    given = Settings.from_env(
        {"SMARTAPP_INSTANCE_PATH": str(tmp_path / "i"), "SMARTAPP_ALLOWED_ISSUERS": ISS},
        sandbox_issuer="http://localhost:1/fhir",
    )
    assert given.allowed_issuers == (ISS, "http://localhost:1/fhir")
    assert given.source_of("SMARTAPP_ALLOWED_ISSUERS") == "environment + sandbox"


def test_config_option_is_the_site_files_source(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text(ONLY_ALLERGIES, encoding="utf-8")
    sources = read_sources(config=site, environ={"SMARTAPP_INSTANCE_PATH": str(tmp_path / "i")})
    settings = sources.settings()
    assert settings.site_config_path == site
    assert settings.source_of("SMARTAPP_CONFIG") == "--config"
    assert settings.source_of("SMARTAPP_INSTANCE_PATH") == "environment"


def test_settings_built_in_code_say_given(tmp_path):
    read = make_settings(tmp_path)
    changed = read.model_copy(update={"max_pages": 3})
    assert changed.source_of("SMARTAPP_MAX_PAGES") == "given"
    assert changed.source_of("SMARTAPP_INSTANCE_PATH") == "environment"
    assert read.source_of("SMARTAPP_MAX_PAGES") == "default"
    built = Settings(
        instance_path=tmp_path,
        manifest=read.manifest,
        allowed_issuers=(ISS,),
        client_id="c",
        database_url="sqlite://",
        secret_key="k",
        max_pages=4,
    )
    assert built.source_of("SMARTAPP_MAX_PAGES") == "given"
    assert built.source_of("SMARTAPP_SNAPSHOT_TTL") == "default"


def test_check_reads_settings_without_writing_anything(tmp_path):
    instance = tmp_path / "instance"
    settings = Settings.from_env({"SMARTAPP_INSTANCE_PATH": str(instance)}, create_instance=False)
    assert not instance.exists()
    assert settings.source_of("SMARTAPP_SECRET_KEY").endswith("not generated yet)")
    shown = {v.name: v.value for v in settings.described()}
    assert shown["SMARTAPP_SECRET_KEY"] == "(secret, generated at the first start)"


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
