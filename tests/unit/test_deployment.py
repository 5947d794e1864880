"""Unit: several processes need one SMARTAPP_SECRET_KEY; the commands refuse to start them
on a key generated in one instance folder, and say how to set one."""

from __future__ import annotations

import pytest

from smartapp.cli import main


@pytest.fixture
def production_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no .env from the repository
    for name, value in {
        "SMARTAPP_INSTANCE_PATH": str(tmp_path / "instance"),
        "SMARTAPP_DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
        "SMARTAPP_ALLOWED_ISSUERS": "https://ehr.example.org/fhir",
        "SMARTAPP_PUBLIC_URL": "https://smartapp.example.org",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SMARTAPP_SECRET_KEY", raising=False)


@pytest.mark.parametrize("command", [["serve", "--processes", "2"], ["worker"]])
def test_several_processes_refuse_to_start_without_a_shared_secret_key(
    production_env, capsys, command
):
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "SMARTAPP_SECRET_KEY is not set" in err
    assert "same key" in err


def test_serve_refuses_zero_processes(production_env, monkeypatch, capsys):
    monkeypatch.setenv("SMARTAPP_SECRET_KEY", "a-shared-key-for-every-process-0123456789")
    assert main(["serve", "--processes", "0"]) == 2
    assert "--processes must be at least 1" in capsys.readouterr().err
