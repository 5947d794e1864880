"""Browser: the chart opened again for the same visit shows the saved draft and its decisions.

Real Chromium in the sandbox EHR's page: decide and save, reload the chart (a new EHR
launch of the same encounter), and find the draft's line, the decided card decided, the
count of what is left, and a save that updates the one note in the EHR. A result added
to the chart between the two launches is marked new since the draft.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from smartapp.stack import Stack
from tests.browser.conftest import screenshot
from tests.browser.test_sidebar_flows import (  # noqa: F401  (fixtures: page, stack)
    notes_in_chart,
    open_chart,
    page,
    sidebar_clip,
    stack,
)

pytestmark = pytest.mark.browser

PENICILLIN_ALLERGY = {
    "resourceType": "AllergyIntolerance",
    "id": "visit-test-penicillin",
    "clinicalStatus": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                "code": "active",
            }
        ]
    },
    "verificationStatus": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                "code": "confirmed",
            }
        ]
    },
    "code": {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "7980"}],
        "text": "Penicillin G",
    },
    "patient": {"reference": "Patient/pt-01"},
    "recordedDate": "2026-11-30",
}


def test_reopening_the_chart_shows_the_saved_draft_and_its_decisions(
    page,  # noqa: F811
    stack: Stack,  # noqa: F811
):
    sidebar = open_chart(page, stack, "pt-01")
    cards = sidebar.locator("#suggestion-list > .card")
    total = cards.count()
    expect(sidebar.locator("#visit-status")).to_be_hidden()  # nothing saved for this visit yet
    first = cards.nth(0)
    first_id = first.get_attribute("data-id")
    first_statement = first.locator(".statement-text").first.inner_text()
    first.locator(".card-toggle").click()  # a card opens to its decisions
    first.locator("button.accept").click()
    expect(first).to_have_attribute("data-decision", "accept")
    sidebar.locator("#save-note").click()
    expect(sidebar.locator("#save-status[data-kind=ok]")).to_be_visible(timeout=20_000)
    expect(sidebar.locator("#visit-status .draft-saved")).to_contain_text("Draft saved")

    # The EHR records an allergy, then the clinician opens the chart again.
    store = stack.ehr.extensions["smartapp.sandbox"].store
    store.put(PENICILLIN_ALLERGY, patient="pt-01")
    sidebar = open_chart(page, stack, "pt-01")
    cards = sidebar.locator("#suggestion-list > .card")
    visit = sidebar.locator("#visit-status")
    expect(visit).to_be_visible()
    expect(visit.locator(".draft-saved")).to_contain_text("Draft saved")
    expect(visit).to_contain_text("in the chart for you to sign")
    again = sidebar.locator(f'#suggestion-list > .card[data-id="{first_id}"]')
    expect(again).to_have_attribute("data-decision", "accept")
    expect(again.locator(".decision-badge")).to_have_text("Accepted")
    total_now = cards.count()
    expect(sidebar.locator("#pending-count")).to_have_text(
        f"{total_now - 1} of {total_now} to decide"
    )
    # What the allergy changed is drafted afresh and marked; the saved draft is the note.
    expect(visit.locator(".since-draft-summary")).to_contain_text("new suggestion")
    fresh = sidebar.locator("#suggestion-list > .card.new-since-draft")
    expect(fresh.first.locator(".since-draft")).to_have_text("New since your draft")
    assert first_id not in [fresh.nth(i).get_attribute("data-id") for i in range(fresh.count())]
    expect(sidebar.locator("#save-label")).to_have_text("In the chart")
    expect(sidebar.locator("#save-note")).to_be_disabled()
    screenshot(page, "sidebar_reopened_draft.png", clip=sidebar_clip(page))

    kinds = [fresh.nth(i).get_attribute("data-kind") for i in range(fresh.count())]
    assert "allergies" in kinds, kinds
    # The new allergy card: it goes in the note, so the note now differs from the draft.
    allergies = sidebar.locator(".card.new-since-draft[data-kind=allergies]")
    allergies.locator(".card-toggle").click()
    allergies.locator("button.accept").click()
    expect(sidebar.locator("#save-label")).to_have_text("Save changes to chart")
    sidebar.locator("#save-note").click()
    expect(sidebar.locator("#save-status[data-kind=ok]")).to_be_visible(timeout=20_000)
    expect(visit).to_contain_text("saved 2 times")

    (note,) = notes_in_chart(stack, "pt-01")  # one draft for the visit, updated
    # A cross-reference to a card left out of the note is left out with it (composer).
    assert re.sub(r" \(see [^)]*\)$", "", first_statement) in note
    assert total >= 2
