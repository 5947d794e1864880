"""Admins are (issuer, fhirUser): the same Practitioner id at another EHR is someone else."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from smartapp import create_app
from smartapp.admin.auth import is_admin
from tests.conftest import make_settings

A = "https://ehr-a.test/fhir"
B = "https://ehr-b.test/fhir"


def _settings(tmp_path: Path, admins: str, issuers: str = f"{A},{B}"):  # type: ignore[no-untyped-def]
    return make_settings(tmp_path, SMARTAPP_ALLOWED_ISSUERS=issuers, SMARTAPP_ADMIN_USERS=admins)


def _start_and_dispose(settings) -> None:  # type: ignore[no-untyped-def]
    """Start-up logs are what is under test; the app's engine must not outlive it."""
    create_app(settings).extensions["smartapp.db"].dispose()


def test_pipe_entry_binds_to_its_issuer(tmp_path: Path) -> None:
    settings = _settings(tmp_path, f"{A}|Practitioner/1")
    assert is_admin(settings, "Practitioner/1", A)
    assert is_admin(settings, f"{A}/Practitioner/1", A + "/")
    assert not is_admin(settings, "Practitioner/1", B)


def test_absolute_entry_does_not_match_at_another_issuer(tmp_path: Path) -> None:
    settings = _settings(tmp_path, f"{A}/Practitioner/1")
    assert is_admin(settings, "Practitioner/1", A)
    assert not is_admin(settings, "Practitioner/1", B)
    # An absolute fhirUser naming issuer A but signed in at B is not A's admin.
    assert not is_admin(settings, f"{A}/Practitioner/1", B)


def test_relative_entry_needs_a_single_issuer(tmp_path: Path) -> None:
    assert not is_admin(_settings(tmp_path, "Practitioner/1"), "Practitioner/1", A)
    single = _settings(tmp_path, "Practitioner/1", issuers=A)
    assert is_admin(single, "Practitioner/1", A)
    assert not is_admin(single, "Practitioner/1", B)


def test_no_issuer_is_no_admin(tmp_path: Path) -> None:
    assert not is_admin(_settings(tmp_path, f"{A}|Practitioner/1"), "Practitioner/1", None)


def test_startup_says_how_entries_are_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="smartapp.admin.auth"):
        _start_and_dispose(_settings(tmp_path, "Practitioner/1"))
    assert any("is ignored" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="smartapp.admin.auth"):
        _start_and_dispose(_settings(tmp_path / "one", "Practitioner/1", issuers=A))
    assert any("bound to the only allowed issuer" in r.getMessage() for r in caplog.records)
