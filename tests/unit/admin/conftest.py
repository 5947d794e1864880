"""Fixtures for the governance tests: a store on SQLite and (when configured) PostgreSQL,
and an app whose admin identity is supplied through the `auth.IDENTITY_EXT` seam."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from smartapp import create_app
from smartapp.admin.auth import SIGNIN_EXT, SignedInUser, set_identity_provider
from smartapp.db import Database
from smartapp.security import register_csrf_lookup
from tests.conftest import make_settings

ADMIN_1 = "Practitioner/admin1"
#: Listed absolute, as Epic sends fhirUser; signs in relative.
ADMIN_2_LISTED = "http://ehr.test/fhir/Practitioner/admin2"
ADMIN_2 = "Practitioner/admin2"
CLINICIAN = "Practitioner/clinician7"
TOKEN = "test-admin-token-0123456789"
ISS = "http://ehr.test/fhir"


def who(user: str, iss: str = ISS) -> str:
    """How the audit trail and change control name a person: bound to their EHR."""
    return f"{iss}|{user}"


CSRF = "csrf-token-for-admin-tests"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of our own on the shared server, dropped at the end of the run."""
    base = os.environ.get("SMARTAPP_TEST_DATABASE_URL")
    if not base or not base.startswith("postgresql"):
        pytest.skip("SMARTAPP_TEST_DATABASE_URL is not a PostgreSQL URL")
    name = f"smartapp_admin_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin_engine = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin_engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin_engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh store: SQLite always, PostgreSQL when SMARTAPP_TEST_DATABASE_URL is set."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'admin.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    db = Database(url)
    db.drop_all()
    db.create_all()
    yield db
    db.drop_all()
    db.dispose()


@dataclass
class FakeIdentity:
    """Stands in for the SMART admin session: whoever `user` says is signed in."""

    user: SignedInUser | None = None
    signins: list[str] = field(default_factory=list)

    def sign_in(self, fhir_user: str | None, *, site: str = "http://ehr.test/fhir") -> None:
        self.user = SignedInUser(fhir_user=fhir_user, site=site, csrf_token=CSRF)

    def sign_out(self) -> None:
        self.user = None

    def __call__(self) -> SignedInUser | None:
        return self.user


def make_admin_app(tmp_path: Path, identity: FakeIdentity, **env: str) -> Flask:
    settings = make_settings(
        tmp_path,
        SMARTAPP_DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}",
        SMARTAPP_ADMIN_USERS=f"{ADMIN_1},{ADMIN_2_LISTED}",
        **env,
    )
    app = create_app(settings)
    app.config["TESTING"] = True
    set_identity_provider(app, identity)
    # The SMART package registers the real lookup; here the fake session holds the token.
    register_csrf_lookup(app, lambda: identity.user.csrf_token if identity.user else None)

    def fake_signin(iss: str):
        from flask import redirect

        identity.signins.append(iss)
        return redirect("https://ehr.test/authorize?aud=" + iss)

    app.extensions[SIGNIN_EXT] = fake_signin
    return app


@pytest.fixture
def identity() -> FakeIdentity:
    return FakeIdentity()


@pytest.fixture
def admin_app(tmp_path: Path, identity: FakeIdentity) -> Iterator[Flask]:
    app = make_admin_app(tmp_path, identity, SMARTAPP_ADMIN_TOKEN=TOKEN)
    yield app
    app.extensions["smartapp.db"].dispose()


@pytest.fixture
def api(admin_app: Flask):
    return admin_app.test_client()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def csrf() -> dict[str, str]:
    return {"X-CSRF-Token": CSRF}
