"""Unit: `smartapp baseline` end to end against a faked EHR (`responses`): it checks the
allow-list, stores only aggregates per clinician and week, says what it stored, and a re-run
replaces the weeks it covers."""

from __future__ import annotations

import base64
import io
import json
from datetime import date

import pytest
import responses
from joserfc.jwk import RSAKey
from sqlalchemy import inspect, select

from smartapp.baseline.cli import run_cli
from smartapp.baseline.models import BaselineRun, BaselineWeek
from smartapp.cli import build_parser
from smartapp.config import ConfigError
from smartapp.db import Database
from tests.conftest import test_database_url

ISS = "https://ehr.test/fhir"
TOKEN = "https://ehr.test/auth/token"
STATUS = f"{ISS}/$export-status/j1"


@pytest.fixture
def environ(tmp_path):
    key = tmp_path / "app.pem"
    key.write_bytes(RSAKey.generate_key(2048).as_pem(private=True))
    return {
        "SMARTAPP_INSTANCE_PATH": str(tmp_path / "instance"),
        "SMARTAPP_ALLOWED_ISSUERS": ISS,
        "SMARTAPP_SECRET_KEY": "test-secret",
        "SMARTAPP_PUBLIC_URL": "http://localhost",
        "SMARTAPP_DATABASE_URL": test_database_url(tmp_path),
        "SMARTAPP_PRIVATE_KEY": str(key),
    }


def ndjson(resources):
    return "\n".join(json.dumps(r) for r in resources) + "\n"


def fake_ehr(notes_text="PROGRESS NOTE"):
    responses.get(
        f"{ISS}/.well-known/smart-configuration",
        json={
            "token_endpoint": TOKEN,
            "grant_types_supported": ["client_credentials"],
            "capabilities": ["permission-v2"],
        },
    )
    responses.post(TOKEN, json={"access_token": "sys", "token_type": "Bearer", "expires_in": 300})
    responses.get(f"{ISS}/$export", status=202, headers={"Content-Location": STATUS})
    responses.get(STATUS, status=202, headers={"Retry-After": "3"})
    responses.get(
        STATUS,
        json={
            "transactionTime": "2026-10-16T00:00:00Z",
            "requiresAccessToken": True,
            "output": [
                # Notes listed first: the run reads the Encounters first anyway.
                {"type": "DocumentReference", "url": f"{ISS}/files/d.ndjson"},
                {"type": "Encounter", "url": f"{ISS}/files/e.ndjson"},
            ],
            "error": [],
        },
    )
    encounter = {
        "resourceType": "Encounter",
        "id": "enc-1",
        "subject": {"reference": "Patient/pt-secret"},
        "period": {"start": "2026-10-05T09:00:00Z", "end": "2026-10-05T10:00:00Z"},
    }
    note = {
        "resourceType": "DocumentReference",
        "id": "doc-1",
        "status": "current",
        "subject": {"reference": "Patient/pt-secret"},
        "date": "2026-10-05T16:00:00Z",
        "author": [{"reference": "Practitioner/dr-a"}],
        "context": {"encounter": [{"reference": "Encounter/enc-1"}]},
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "data": base64.b64encode(notes_text.encode()).decode(),
                }
            }
        ],
    }
    responses.get(f"{ISS}/files/e.ndjson", body=ndjson([encounter]))
    responses.get(f"{ISS}/files/d.ndjson", body=ndjson([note]))
    responses.delete(STATUS, status=202)


def run(environ, *argv, slept=None):
    args = build_parser().parse_args(["baseline", *argv])
    out = io.StringIO()
    result = run_cli(
        args,
        environ=environ,
        out=out,
        sleep=(slept.append if slept is not None else lambda _s: None),
    )
    return result, out.getvalue()


@responses.activate
def test_baseline_stores_only_aggregates_and_says_what_it_stored(environ):
    fake_ehr()
    slept: list[float] = []
    code, printed = run(environ, "--since", "2026-10-01", "--go-live", "2026-10-08", slept=slept)
    assert code == 0
    assert slept == [3.0]
    assert "stored: 1 clinician-week aggregates for 1 clinician(s)" in printed
    assert "no note text, no patient ids" in printed
    assert "go-live: 2026-10-08 (--go-live)" in printed

    kickoff = next(c.request for c in responses.calls if "$export?" in c.request.url)
    assert kickoff.params["_type"] == "Encounter,DocumentReference"
    assert kickoff.params["_since"].startswith("2026-09-01")  # 30 days' look-back
    assert responses.calls[-1].request.method == "DELETE"

    db = Database(environ["SMARTAPP_DATABASE_URL"])
    with db.session() as s:
        [week] = s.scalars(select(BaselineWeek)).all()
        assert (week.issuer, week.fhir_user, week.week) == (ISS, "Practitioner/dr-a", "2026-W41")
        assert (week.notes, week.median_lag_hours, week.median_note_chars) == (1, 6.0, 13.0)
        [stored_run] = s.scalars(select(BaselineRun)).all()
        assert stored_run.go_live == date(2026, 10, 8)
        # Nothing in either table names a patient, an encounter or a note.
        columns = {
            c["name"]
            for t in ("baseline_week", "baseline_run")
            for c in inspect(db.engine).get_columns(t)
        }
        assert not {"patient_id", "encounter_id", "text"} & columns
        dumped = json.dumps([str(v) for v in vars(week).values()])
        assert "pt-secret" not in dumped and "enc-1" not in dumped and "PROGRESS" not in dumped
    db.dispose()


@responses.activate
def test_a_rerun_replaces_the_weeks_it_covers_and_keeps_the_go_live(environ):
    fake_ehr()
    run(environ, "--since", "2026-10-01", "--go-live", "2026-10-08")
    fake_ehr(notes_text="short")
    code, printed = run(environ, "--since", "2026-10-01", "--json")
    assert code == 0
    report = json.loads(printed)
    assert report["goLive"] == "2026-10-08"
    assert report["goLiveSource"] == "the previous run's"
    db = Database(environ["SMARTAPP_DATABASE_URL"])
    with db.session() as s:
        weeks = s.scalars(select(BaselineWeek)).all()
        assert [(w.week, w.median_note_chars) for w in weeks] == [("2026-W41", 5.0)]
    db.dispose()


def test_an_issuer_off_the_allow_list_is_refused_before_any_request(environ):
    with pytest.raises(ConfigError, match="not on SMARTAPP_ALLOWED_ISSUERS"):
        run(environ, "--since", "2026-10-01", "--issuer", "https://evil.test/fhir")


def test_without_a_private_key_it_says_backend_services_need_one(environ):
    del environ["SMARTAPP_PRIVATE_KEY"]
    with pytest.raises(ConfigError, match="SMARTAPP_PRIVATE_KEY is not set"):
        run(environ, "--since", "2026-10-01")


@responses.activate
def test_a_refused_export_exits_1_with_the_reason(environ, capsys):
    fake_ehr()
    responses.replace(
        responses.GET,
        f"{ISS}/$export",
        status=403,
        json={
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "forbidden"}],
        },
    )
    code, _ = run(environ, "--since", "2026-10-01")
    assert code == 1
    assert "forbidden" in capsys.readouterr().err
