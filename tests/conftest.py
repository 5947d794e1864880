"""Shared fixtures: settings on a temporary instance folder, the app, a test client."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from smartapp import create_app
from smartapp.config import PROJECT_ROOT, Settings

SANDBOX_ISS = "http://ehr.test/fhir"


def make_settings(tmp_path: Path, **env: str) -> Settings:
    """Settings as the factory reads them, from an explicit environment (never os.environ)."""
    base = {
        "SMARTAPP_INSTANCE_PATH": str(tmp_path / "instance"),
        "SMARTAPP_ALLOWED_ISSUERS": SANDBOX_ISS,
        "SMARTAPP_SECRET_KEY": "test-secret-key-not-for-production",
        # The test client's own origin: production refuses to start without a public URL.
        "SMARTAPP_PUBLIC_URL": "http://localhost",
        "SMARTAPP_DATABASE_URL": test_database_url(tmp_path),
        # Outside sandbox mode the app migrates only when asked; the unit tests ask.
        "SMARTAPP_MIGRATE_ON_START": "true",
        # The unit tests count and order the EHR's requests; a chart read ahead in the
        # background would race them (tests/unit/notes/test_chart_prefetch.py turns it on).
        "SMARTAPP_PREFETCH_CHART": "false",
    }
    base.update(env)
    return Settings.from_env(base)


def test_database_url(tmp_path: Path) -> str:
    """SQLite per test, or the PostgreSQL server when SMARTAPP_TEST_DATABASE_URL is set."""
    return os.environ.get("SMARTAPP_TEST_DATABASE_URL") or f"sqlite:///{tmp_path / 'app.db'}"


test_database_url.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def app(settings: Settings):
    app = create_app(settings)
    app.config["TESTING"] = True
    db = app.extensions["smartapp.db"]
    db.drop_all()
    db.upgrade()
    yield app
    close_app(app)


def close_app(app: Any) -> None:
    """Stop what an app runs in the background, then close its store, as a stopping
    process does: a thread left reading ahead would open a connection after the store
    was closed, and its garbage-collected connection would fail a later test."""
    for close in app.extensions.get("smartapp.on_shutdown", []):
        close()
    app.extensions["smartapp.db"].dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def sandbox_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sandbox's data folder with its population generated (once per run)."""
    from smartapp.sandbox.ehr import create_ehr_app

    data_dir = tmp_path_factory.mktemp("sandbox-template")
    manifest = json.loads((PROJECT_ROOT / "launch.json").read_text())
    create_ehr_app(
        data_dir=data_dir,
        ehr_base_url="http://localhost:1",
        app_base_url="http://127.0.0.1:2",
        manifest=manifest,
    )
    return data_dir


def in_note(statement_text: str, note: str) -> bool:
    """A card's statement as the note holds it: a cross-reference to another card ("… (see
    Assessment and plan)") becomes the note section that holds it, or is dropped when that
    card is not in the note (smartapp.notes.composer)."""
    import re

    base = re.sub(r" \(see [^()]*(\([^()]*\))?[^()]*\)$", "", statement_text)
    base = re.sub(r": see .*$", "", base)
    return statement_text in note or base in note
