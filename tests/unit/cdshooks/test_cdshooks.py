"""Unit: the CDS Hooks service — discovery, the EHR's JWT, prefetch as untrusted chart data,
the card, the warmed chart for the launch, feedback (the app through Flask's test client)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from smartapp import audit, create_app
from smartapp.cdshooks.discovery import PREFETCH
from smartapp.cdshooks.models import CardFeedback
from smartapp.cdshooks.warm import WarmCharts
from smartapp.db import utcnow
from smartapp.governance.registry import ChangeControl
from smartapp.smart.scopes import GrantedScopes
from smartapp.smart.session import LaunchContext
from tests.conftest import SANDBOX_ISS, make_settings

FIXTURE = (
    Path(__file__).parents[2] / "fixtures" / "clinical" / "amoxicillin_penicillin_allergy.json"
)
EHR_ISS = "http://ehr.test"
SERVICE = "smartapp-patient-view"
SERVICE_URL = f"http://localhost/cds-services/{SERVICE}"
PATIENT_ID = "pcn-1"


@pytest.fixture
def ehr_key() -> ECKey:
    return ECKey.generate_key("P-384", parameters={"kid": "ehr-1"})


@pytest.fixture
def cds_app(tmp_path: Path, ehr_key: ECKey):
    jwks = tmp_path / "ehr.jwks.json"
    jwks.write_text(json.dumps({"keys": [ehr_key.as_dict(private=False)]}))
    clients = tmp_path / "cds-clients.toml"
    clients.write_text(
        f'[[client]]\niss = "{EHR_ISS}"\njwks_file = "{jwks}"\nfhir_servers = ["{SANDBOX_ISS}"]\n'
    )
    app = create_app(make_settings(tmp_path, SMARTAPP_CDS_CLIENTS=str(clients)))
    app.config["TESTING"] = True
    db = app.extensions["smartapp.db"]
    db.drop_all()
    db.upgrade()
    yield app
    db.dispose()


def sign(key: Any, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": EHR_ISS,
        "aud": SERVICE_URL,
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    alg = "ES384" if isinstance(key, ECKey) else "RS384"
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def chart_prefetch(*, patient_id: str = PATIENT_ID) -> dict[str, Any]:
    """The fixture chart as an EHR would prefetch it with the discovery templates."""
    bundle = json.loads(FIXTURE.read_text())
    resources = [e["resource"] for e in bundle["entry"]]
    prefetch: dict[str, Any] = {}
    for spec in PREFETCH:
        if spec.read:
            found = [r for r in resources if r["resourceType"] == spec.resource_type]
            if found:
                prefetch[spec.key] = found[0]
            continue
        matching = [r for r in resources if r["resourceType"] == spec.resource_type]
        if spec.resource_type == "Observation":
            category = "laboratory" if spec.key == "laboratory" else "vital-signs"
            matching = [r for r in matching if category in json.dumps(r.get("category"))]
        prefetch[spec.key] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in matching],
        }
    if patient_id != PATIENT_ID:
        prefetch["patient"] = {**prefetch["patient"], "id": patient_id}
    return prefetch


def hook_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": SANDBOX_ISS,
        "context": {"userId": "Practitioner/dr-1", "patientId": PATIENT_ID},
        "prefetch": chart_prefetch(),
    }
    body.update(overrides)
    return body


def call(client: Any, token: str | None, body: dict[str, Any], service: str = SERVICE) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post(f"/cds-services/{service}", json=body, headers=headers)


def test_discovery_lists_both_hooks_with_prefetch_templates(cds_app):
    answer = cds_app.test_client().get("/cds-services").get_json()
    hooks = {s["hook"]: s for s in answer["services"]}
    assert set(hooks) == {"patient-view", "encounter-start"}
    for service in answer["services"]:
        assert {"hook", "id", "title", "description", "prefetch"} <= set(service)
        prefetch = service["prefetch"]
        assert prefetch["patient"] == "Patient/{{context.patientId}}"
        for key in ("conditions", "vitalSigns", "laboratory", "medicationRequests", "allergies"):
            assert "patient={{context.patientId}}" in prefetch[key]


def test_hook_answers_one_card_with_counts_and_smart_link(cds_app, ehr_key):
    answer = call(cds_app.test_client(), sign(ehr_key), hook_body())
    assert answer.status_code == 200, answer.get_json()
    [card] = answer.get_json()["cards"]
    uuid.UUID(card["uuid"])
    assert len(card["summary"]) < 140
    assert "1 medication hint" in card["summary"]
    assert card["indicator"] == "warning"  # an allergy alert is among the hints
    # What each hint is about, in the rule tables' words: no rule id, no chart text.
    [hints] = [line for line in card["detail"].splitlines() if line.startswith("Medication")]
    assert hints == "Medication hints: allergy: Penicillins"
    assert card["source"]["label"]
    [link] = card["links"]
    assert link["type"] == "smart"
    assert link["url"] == "http://localhost/launch"
    assert "smartapp.chart" in json.loads(link["appContext"])


def test_a_kind_switched_off_is_counted_on_no_card(cds_app, ehr_key):
    """The card counts what the sidebar would show: a kill switch on medications (set on
    the dashboard, not in the site file) leaves no medication hint on it."""
    with cds_app.extensions["smartapp.db"].session() as s:
        ChangeControl(min_grounding_rate=0.9).set_kill_switch(
            s,
            scope="kind",
            target="medications",
            engaged=True,
            actor="t",
            reason="test",
            now=utcnow(),
        )
    answer = call(cds_app.test_client(), sign(ehr_key), hook_body())
    [card] = answer.get_json()["cards"]
    assert "medication hint" not in card["summary"]
    assert "Medication hints" not in card.get("detail", "")


def test_hook_call_is_audited_as_a_chart_read(cds_app, ehr_key):
    call(cds_app.test_client(), sign(ehr_key), hook_body())
    db = cds_app.extensions["smartapp.db"]
    with db.session() as session:
        events, _ = audit.search(session, audit.AuditQuery(action=audit.Action.CHART_READ))
        [event] = events
        assert event.patient == f"Patient/{PATIENT_ID}"
        assert event.site == SANDBOX_ISS
        assert event.actor == f"{SANDBOX_ISS}|Practitioner/dr-1"
        assert event.detail["source"] == "cds-hooks prefetch"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"aud": "http://localhost/cds-services/other"}, "another service (aud)"),
        ({"iss": "http://rogue.test"}, "not an EHR registered"),
        # Times are seconds from when the test runs (not from collection: a long suite
        # would turn "600 s ahead" into the past).
        ({"exp": -120, "iat": -180}, "expired"),
        ({"exp": 3600}, "longer than"),
        ({"iat": 600, "exp": 660}, "future"),
        ({"jti": None}, "no id (jti)"),
        ({"exp": None}, "no expiry"),
    ],
)
def test_hook_refuses_a_jwt_failing_a_check(cds_app, ehr_key, overrides, message):
    now = int(time.time())
    claims = {
        k: now + v if k in ("exp", "iat") and v is not None else v for k, v in overrides.items()
    }
    answer = call(cds_app.test_client(), sign(ehr_key, **claims), hook_body())
    assert answer.status_code == 401
    assert message in answer.get_json()["error"]["message"]


def test_hook_refuses_a_missing_token_another_key_and_a_replay(cds_app, ehr_key):
    client = cds_app.test_client()
    assert call(client, None, hook_body()).status_code == 401
    stranger = ECKey.generate_key("P-384", parameters={"kid": "ehr-1"})
    refused = call(client, sign(stranger), hook_body())
    assert refused.status_code == 401
    assert "signature" in refused.get_json()["error"]["message"]
    unknown_kid = ECKey.generate_key("P-384", parameters={"kid": "other"})
    assert call(client, sign(unknown_kid), hook_body()).status_code == 401
    token = sign(ehr_key)
    assert call(client, token, hook_body()).status_code == 200
    replay = call(client, token, hook_body())
    assert replay.status_code == 401
    assert "replay" in replay.get_json()["error"]["message"]


def test_hook_refuses_hs256_and_alg_none(cds_app, ehr_key):
    client = cds_app.test_client()
    now = int(time.time())
    claims = {"iss": EHR_ISS, "aud": SERVICE_URL, "iat": now, "exp": now + 60, "jti": "x1"}
    from joserfc.jwk import OctKey

    forged = jwt.encode({"alg": "HS256"}, claims, OctKey.import_key("s" * 32), algorithms=["HS256"])
    assert call(client, forged, hook_body()).status_code == 401
    unsigned = forged.rsplit(".", 1)[0].split(".")[1]
    none_token = "eyJhbGciOiJub25lIn0." + unsigned + "."
    assert call(client, none_token, hook_body()).status_code == 401


def test_hook_without_registered_ehrs_refuses_every_call(app, ehr_key):
    answer = call(app.test_client(), sign(ehr_key), hook_body())
    assert answer.status_code == 401
    assert "No EHR is registered" in answer.get_json()["error"]["message"]


def test_hook_refuses_a_fhir_server_the_ehr_does_not_speak_for(cds_app, ehr_key):
    body = hook_body(fhirServer="http://other-ehr.test/fhir")
    assert call(cds_app.test_client(), sign(ehr_key), body).status_code == 403


def test_rs384_signed_calls_verify_too(tmp_path):
    key = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    jwks = tmp_path / "ehr.jwks.json"
    jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    clients = tmp_path / "clients.toml"
    clients.write_text(
        f'[[client]]\niss = "{EHR_ISS}"\njwks_file = "{jwks}"\nfhir_servers = ["{SANDBOX_ISS}"]\n'
    )
    app = create_app(make_settings(tmp_path, SMARTAPP_CDS_CLIENTS=str(clients)))
    app.extensions["smartapp.db"].upgrade()
    assert call(app.test_client(), sign(key), hook_body()).status_code == 200
    app.extensions["smartapp.db"].dispose()


def test_prefetch_with_another_patients_resources_drops_them(cds_app, ehr_key):
    body = hook_body()
    intruder = json.loads(json.dumps(body["prefetch"]["medicationRequests"]["entry"][0]))
    intruder["resource"]["id"] = "someone-elses-order"
    intruder["resource"]["subject"] = {"reference": "Patient/other"}
    body["prefetch"]["conditions"]["entry"].append(intruder)  # wrong type and wrong patient
    body["prefetch"]["medicationRequests"]["entry"].append(intruder)
    answer = call(cds_app.test_client(), sign(ehr_key), body)
    card = answer.get_json()["cards"][0]
    token = json.loads(card["links"][0]["appContext"])["smartapp.chart"]
    snapshot = WarmCharts(cds_app.extensions["smartapp.cdshooks"][2]._warm._cache).claim(
        json.dumps({"smartapp.chart": token}), iss=SANDBOX_ISS, patient_id=PATIENT_ID
    )
    assert snapshot is not None
    assert "MedicationRequest/someone-elses-order" not in snapshot
    assert any(p.code == "wrong_patient" for p in snapshot.problems)


def test_prefetch_of_another_patient_warms_nothing(cds_app, ehr_key):
    body = hook_body(prefetch=chart_prefetch(patient_id="other"))
    [card] = call(cds_app.test_client(), sign(ehr_key), body).get_json()["cards"]
    assert "appContext" not in card["links"][0]
    assert "open it to read the chart" in card["summary"]


def test_incomplete_prefetch_answers_without_warming(cds_app, ehr_key):
    body = hook_body()
    del body["prefetch"]["procedures"]
    [card] = call(cds_app.test_client(), sign(ehr_key), body).get_json()["cards"]
    assert "appContext" not in card["links"][0]
    assert "incomplete" in card["detail"]


def launch_for(
    patient_id: str, *, iss: str = SANDBOX_ISS, scope: str = "patient/*.rs"
) -> LaunchContext:
    from datetime import UTC, datetime

    return LaunchContext(
        session_id="s" * 64,
        iss=iss,
        patient_id=patient_id,
        encounter_id=None,
        fhir_user="Practitioner/dr-1",
        fhir_user_raw="Practitioner/dr-1",
        need_patient_banner=False,
        smart_style_url=None,
        scopes=GrantedScopes(scope),
        csrf_token="c",
        purpose="clinician",
        created_at=datetime.now(UTC),
    )


def test_warmed_chart_goes_only_to_a_launch_for_the_same_issuer_and_patient(cds_app, ehr_key):
    [card] = call(cds_app.test_client(), sign(ehr_key), hook_body()).get_json()["cards"]
    app_context = card["links"][0]["appContext"]
    service = cds_app.extensions["smartapp.cdshooks"][2]
    warm, db = service._warm, cds_app.extensions["smartapp.db"]
    cache = warm._cache
    assert not warm.adopt(launch_for("other"), app_context, db=db)
    assert not warm.adopt(launch_for(PATIENT_ID, iss="http://other.test/fhir"), app_context, db=db)
    assert warm.adopt(launch_for(PATIENT_ID), app_context, db=db)
    assert cache.get("s" * 64) is not None
    # Single use: a second launch with the same link reads the chart itself.
    assert not warm.adopt(launch_for(PATIENT_ID), app_context, db=db)


def test_warmed_chart_keeps_only_what_the_launch_may_read(cds_app, ehr_key):
    [card] = call(cds_app.test_client(), sign(ehr_key), hook_body()).get_json()["cards"]
    service = cds_app.extensions["smartapp.cdshooks"][2]
    launch = launch_for(PATIENT_ID, scope="patient/Patient.rs patient/Condition.rs")
    assert service._warm.adopt(
        launch, card["links"][0]["appContext"], db=cds_app.extensions["smartapp.db"]
    )
    snapshot = service._warm._cache.get("s" * 64)
    assert not snapshot.of_type("MedicationRequest")
    assert "MedicationRequest" in snapshot.not_granted


def test_feedback_is_recorded_once_and_audited(cds_app, ehr_key):
    client = cds_app.test_client()
    [card] = call(client, sign(ehr_key), hook_body()).get_json()["cards"]
    item = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {
            "reason": {"system": "http://example.org/reasons", "code": "not-now"},
            "userComment": "seen it",
        },
        "outcomeTimestamp": "2026-12-02T20:00:00Z",
    }
    url = f"/cds-services/{SERVICE}/feedback"
    for _ in range(2):
        answer = client.post(
            url,
            json={"feedback": [item]},
            headers={"Authorization": f"Bearer {sign(ehr_key, aud=SERVICE_URL + '/feedback')}"},
        )
        assert answer.status_code == 200, answer.get_json()
    assert answer.get_json() == {"status": "recorded", "recorded": 0, "duplicates": 1}
    db = cds_app.extensions["smartapp.db"]
    with db.session() as session:
        [row] = session.query(CardFeedback).all()
        assert row.outcome == "overridden" and row.override_reason["code"] == "not-now"
        events, _ = audit.search(session, audit.AuditQuery(action="cdshooks.feedback"))
        assert len(events) == 1 and events[0].patient == f"Patient/{PATIENT_ID}"


def test_feedback_on_an_unknown_card_or_bad_outcome_is_refused(cds_app, ehr_key):
    client = cds_app.test_client()
    url = f"/cds-services/{SERVICE}/feedback"

    def send(item: dict[str, Any]) -> int:
        token = sign(ehr_key, aud=SERVICE_URL + "/feedback")
        return client.post(
            url, json={"feedback": [item]}, headers={"Authorization": f"Bearer {token}"}
        ).status_code

    stamp = "2026-12-02T20:00:00Z"
    assert (
        send({"card": str(uuid.uuid4()), "outcome": "accepted", "outcomeTimestamp": stamp}) == 404
    )
    assert send({"card": str(uuid.uuid4()), "outcome": "maybe", "outcomeTimestamp": stamp}) == 400


def test_unknown_service_is_404(cds_app, ehr_key):
    assert (
        call(cds_app.test_client(), sign(ehr_key), hook_body(), service="nope").status_code == 404
    )


def test_hook_for_the_wrong_hook_name_is_refused(cds_app, ehr_key):
    answer = call(cds_app.test_client(), sign(ehr_key), hook_body(hook="order-select"))
    assert answer.status_code == 400


def test_prefetch_may_be_as_large_as_a_fhir_answer_and_no_larger(tmp_path, ehr_key):
    jwks = tmp_path / "ehr.jwks.json"
    jwks.write_text(json.dumps({"keys": [ehr_key.as_dict(private=False)]}))
    clients = tmp_path / "clients.toml"
    clients.write_text(
        f'[[client]]\niss = "{EHR_ISS}"\njwks_file = "{jwks}"\nfhir_servers = ["{SANDBOX_ISS}"]\n'
    )
    app = create_app(
        make_settings(tmp_path, SMARTAPP_CDS_CLIENTS=str(clients), SMARTAPP_FHIR_MAX_MB="3")
    )
    app.extensions["smartapp.db"].upgrade()
    client = app.test_client()
    mib = 1024 * 1024
    # Over the app's 2 MiB for its own API bodies, within the FHIR answer cap of 3 MiB.
    body = hook_body()
    body["prefetch"]["patient"]["text"] = {"status": "generated", "div": "x" * (2 * mib + mib // 2)}
    assert call(client, sign(ehr_key), body).status_code == 200
    body["prefetch"]["patient"]["text"]["div"] = "x" * (3 * mib + mib // 2)
    refused = call(client, sign(ehr_key), body)
    assert refused.status_code == 413
    assert refused.get_json()["error"]["code"] == "body_too_large"
    app.extensions["smartapp.db"].dispose()
