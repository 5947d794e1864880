"""Integration: the sandbox EHR calls the app's `patient-view` hook when a chart opens,
shows the card, and a launch from the card's link shows the first suggestions without
the app reading the chart again (FHIR requests counted on the sandbox's side)."""

from __future__ import annotations

import html
import re
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
