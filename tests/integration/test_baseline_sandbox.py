"""Integration: `smartapp baseline` against the sandbox EHR over loopback, nothing patched —
SMART Backend Services (the sandbox checks the app's assertion against its JWKS URL), a
system-level Bulk `$export` polled to completion, and aggregates stored for every clinician.
Only the sleeper is injected (the sandbox asks to wait 2 s once)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import func, select

from smartapp.baseline.cli import run_cli
from smartapp.baseline.models import BaselineWeek
from smartapp.cli import build_parser
from smartapp.sandbox.history import GO_LIVE
from tests.integration.conftest import app_environ, start_stack


@pytest.fixture
def keyed_stack(tmp_path: Path, sandbox_template: Path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "app-key.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    environ = app_environ(tmp_path, SMARTAPP_PRIVATE_KEY=str(pem))
    stack = start_stack(tmp_path, sandbox_template, environ=environ, documentation_history=True)
    yield stack, environ
    stack.stop()


def baseline_environ(stack, environ):
    return {
        **environ,
        "SMARTAPP_ALLOWED_ISSUERS": stack.fhir_base,
        "SMARTAPP_PUBLIC_URL": stack.app_url,
    }


def test_baseline_exports_from_the_sandbox_and_stores_every_clinicians_weeks(keyed_stack):
    stack, environ = keyed_stack
    slept: list[float] = []
    args = build_parser().parse_args(
        ["baseline", "--since", "2026-06-29", "--go-live", GO_LIVE.isoformat(), "--json"]
    )
    out = io.StringIO()
    code = run_cli(args, environ=baseline_environ(stack, environ), out=out, sleep=slept.append)
    assert code == 0, out.getvalue()
    report = json.loads(out.getvalue())
    assert slept == [2.0]
    assert report["scope"] == "system/Encounter.rs system/DocumentReference.rs"
    assert report["clinicians"] == 4
    # Twelve history weeks per clinician, and the charts' own recent notes after them.
    assert report["weeksStored"] >= 48
    assert report["notesCounted"] >= 4 * 12 * 4

    db = stack.app.extensions["smartapp.db"]
    with db.session() as s:
        users = set(s.scalars(select(BaselineWeek.fhir_user).distinct()))
        assert users == {
            "Practitioner/dr-ada-lovelace",
            "Practitioner/dr-rene-laennec",
            "Practitioner/np-mary-seacole",
            "Practitioner/dr-william-osler",
        }
        lag_before = s.scalar(
            select(func.avg(BaselineWeek.median_lag_hours)).where(
                BaselineWeek.fhir_user == "Practitioner/dr-ada-lovelace",
                BaselineWeek.week_start < GO_LIVE,
            )
        )
        lag_after = s.scalar(
            select(func.avg(BaselineWeek.median_lag_hours)).where(
                BaselineWeek.fhir_user == "Practitioner/dr-ada-lovelace",
                BaselineWeek.week_start >= GO_LIVE,
                BaselineWeek.week_start < GO_LIVE.replace(month=9, day=21),
            )
        )
    assert lag_after < lag_before


def test_sandbox_export_needs_a_system_token(keyed_stack):
    stack, _ = keyed_stack
    response = requests.get(
        f"{stack.fhir_base}/$export",
        headers={"Accept": "application/fhir+json", "Prefer": "respond-async"},
        timeout=30,
    )
    assert response.status_code == 401
    assert response.json()["resourceType"] == "OperationOutcome"


def test_sandbox_refuses_client_credentials_without_an_assertion(keyed_stack):
    stack, environ = keyed_stack
    response = requests.post(
        f"{stack.ehr_url}/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": "system/Encounter.rs",
            "client_id": stack.settings.client_id,
        },
        timeout=30,
    )
    assert response.status_code in (400, 401)
    assert response.json()["error"] == "invalid_client"
