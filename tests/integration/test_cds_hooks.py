"""Integration: the sandbox EHR calls the app's `patient-view` hook when a chart opens,
shows the card, and a launch from the card's link shows the first suggestions without
the app reading the chart again (FHIR requests counted on the sandbox's side)."""

from __future__ import annotations

import html
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from smartapp import audit
from smartapp.stack import Stack
from tests.integration.conftest import CSRF_META, browser, ehr_launch, start_stack

pytestmark = pytest.mark.integration

CARD_LINK = re.compile(r'<a href="([^"]+)" target="smart-app" data-testid="cds-card-link">')


@pytest.fixture
def cds_stack(tmp_path: Path, sandbox_template: Path) -> Iterator[Stack]:
    running = start_stack(tmp_path, sandbox_template, cds_hooks=True)
    yield running
    running.stop()


def stats(stack: Stack) -> dict[str, int]:
    answer = requests.get(f"{stack.ehr_url}/_sandbox/stats", timeout=30).json()
    return {"fhir": answer["fhir"], **answer["kinds"]}


def reset(stack: Stack) -> None:
    requests.post(f"{stack.ehr_url}/_sandbox/stats/reset", timeout=30).raise_for_status()


def suggestion_texts(session: requests.Session, stack: Stack, csrf: str) -> set[tuple[str, str]]:
    answer = session.get(
        f"{stack.app_url}/api/suggestions", headers={"X-CSRF-Token": csrf}, timeout=60
    )
    assert answer.status_code == 200, answer.text[:300]
    return {(s["kind"], s["text"]) for s in answer.json()["suggestions"]}


# bench-large: hundreds of Observations, more than one page of the app's own searches.
@pytest.mark.parametrize("patient", ["pt-01", "bench-large"])
def test_launch_from_the_card_shows_suggestions_without_another_chart_read(cds_stack, patient):
    stack = cds_stack
    ehr = browser()
    reset(stack)
    page = ehr.get(f"{stack.ehr_url}/patients/{patient}", timeout=60)
    assert page.status_code == 200
    assert 'data-testid="cds-card"' in page.text
    assert "smartapp has ready" in page.text or "no care gaps" in page.text
    # The hook's chart came from the EHR's prefetch: the app asked the FHIR API nothing.
    assert stats(stack)["fhir"] == 0
    match = CARD_LINK.search(page.text)
    assert match, "the card carries a smart link the EHR honours"

    reset(stack)
    clinician = browser()
    sidebar = clinician.get(html.unescape(match.group(1)), timeout=60)
    assert sidebar.status_code == 200 and sidebar.url == f"{stack.app_url}/"
    csrf = CSRF_META.search(sidebar.text)
    assert csrf
    # What the sidebar page asks first: the context, then the suggestions.
    context = clinician.get(
        f"{stack.app_url}/api/context", headers={"X-CSRF-Token": csrf.group(1)}, timeout=60
    )
    assert context.status_code == 200 and context.json()["chart"] is not None
    warmed = suggestion_texts(clinician, stack, csrf.group(1))
    assert warmed, "the first suggestions are there"
    after = stats(stack)
    assert after["fhir"] == 0, f"the sidebar read the chart again: {after}"
    assert after.get("token") == 1 and after.get("authorize") == 1

    # The same chart read the ordinary way gives the same suggestions.
    ordinary = ehr_launch(stack, patient)
    read = suggestion_texts(ordinary.session, stack, ordinary.csrf)
    assert stats(stack)["fhir"] > 0
    assert warmed == read

    db = stack.app.extensions["smartapp.db"]
    with db.session() as session:
        events, _ = audit.search(
            session, audit.AuditQuery(action=audit.Action.CHART_READ, patient=f"Patient/{patient}")
        )
        sources = [e.detail.get("source") for e in events]
    assert "cds-hooks prefetch" in sources  # the hook's read, and the launch's adoption
    assert sources.count("cds-hooks prefetch") == 2


def hook_call(stack: Stack, body: dict[str, object]) -> requests.Response:
    """A hook call as the sandbox EHR signs it, with a body the test chooses."""
    cds = stack.ehr.extensions["smartapp.sandbox"].cds
    url = f"{stack.app_url}/cds-services/smartapp-patient-view"
    return requests.post(
        url, json=body, headers={"Authorization": f"Bearer {cds._token(url)}"}, timeout=60
    )


def sandbox_token(stack: Stack, *, patient: str) -> str:
    """An access token the sandbox EHR issues for the hook (as fhirAuthorization carries)."""
    store = stack.ehr.extensions["smartapp.sandbox"].store
    token = f"hook-token-{patient}"
    now = time.time()
    store.add_token(
        access_token=token,
        refresh_token=None,
        client_id=stack.settings.client_id,
        scope="patient/*.rs",
        user="dr-ada-lovelace",
        patient=patient,
        encounter=None,
        launch_type="ehr",
        code=None,
        issued_at=now,
        expires_at=now + 300,
        refresh_expires_at=None,
    )
    return token


def test_without_prefetch_the_chart_is_read_with_fhir_authorization(cds_stack):
    stack = cds_stack
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": stack.fhir_base,
        "fhirAuthorization": {
            "access_token": sandbox_token(stack, patient="pt-03"),
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.rs",
            "subject": "smartapp",
            "patient": "pt-03",
        },
        "context": {"userId": "Practitioner/dr-ada-lovelace", "patientId": "pt-03"},
    }
    reset(stack)
    answer = hook_call(stack, body)
    assert answer.status_code == 200, answer.text[:300]
    [card] = answer.json()["cards"]
    assert "appContext" in card["links"][0]
    assert stats(stack)["fhir"] > 0  # the app read the chart itself, with the EHR's token
    db = stack.app.extensions["smartapp.db"]
    with db.session() as session:
        events, _ = audit.search(
            session, audit.AuditQuery(action=audit.Action.CHART_READ, patient="Patient/pt-03")
        )
    assert [e.detail.get("source") for e in events] == ["cds-hooks fhir"]


def test_a_fhir_authorization_for_another_patient_reads_nothing(cds_stack):
    stack = cds_stack
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": stack.fhir_base,
        "fhirAuthorization": {
            "access_token": sandbox_token(stack, patient="pt-04"),
            "token_type": "Bearer",
            "scope": "patient/*.rs",
            "patient": "pt-04",
        },
        "context": {"userId": "Practitioner/dr-ada-lovelace", "patientId": "pt-03"},
    }
    reset(stack)
    [card] = hook_call(stack, body).json()["cards"]
    assert "appContext" not in card["links"][0]
    assert stats(stack)["fhir"] == 0
