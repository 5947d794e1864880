"""Browser: a chart of 15 active problems reads in two screens of a 420 × 770 px sidebar.

A layout measurement in real Chromium, not a timing test: the summary of what changed since
the last note, then every card closed to its first line, end within two screens (twice the
viewport's height less the sticky note footer, which covers the bottom of each); each
card opens to the rest with a key (O or Enter) or a click, and says so (aria-expanded).
The chart is tests/fixtures/clinical/fifteen_problems.json, loaded into the sandbox EHR.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from smartapp.stack import Stack
from tests.browser.conftest import screenshot
from tests.integration.conftest import start_stack

pytestmark = pytest.mark.browser

CHART = Path(__file__).resolve().parents[1] / "fixtures" / "clinical" / "fifteen_problems.json"
WIDTH, HEIGHT = 420, 770


@pytest.fixture
def stack(tmp_path: Path, sandbox_template: Path) -> Iterator[Stack]:
    running = start_stack(tmp_path, sandbox_template)
    yield running
    running.stop()


@pytest.fixture
def sidebar(chromium: Any, stack: Stack) -> Iterator[Any]:
    """The sidebar alone at 420 × 770, launched by the sandbox EHR for the 15-problem chart."""
    loaded = requests.post(
        f"{stack.ehr_url}/_sandbox/patients",
        json=json.loads(CHART.read_text(encoding="utf-8")),
        timeout=30,
    )
    assert loaded.status_code == 201, loaded.text
    minted = requests.post(
        f"{stack.ehr_url}/_sandbox/launch", json={"patient": loaded.json()["patient"]}, timeout=10
    ).json()
    context = chromium.new_context(viewport={"width": WIDTH, "height": HEIGHT})
    page = context.new_page()
    page.goto(minted["launch_url"])
    page.locator("#suggestion-list > .card").first.wait_for(timeout=30_000)
    yield page
    context.close()


def test_summary_and_the_first_line_of_every_card_fit_in_two_screens(sidebar: Any):
    page = sidebar
    cards = page.locator("#suggestion-list > .card")
    plans = page.locator("#suggestion-list > .card[data-kind=assessment_plan]")
    expect(plans).to_have_count(15)
    total = cards.count()
    assert total >= 20  # the problem cards and the summary, medication, vitals, ... cards

    # First: what changed since the last note, saying which note.
    changes = page.locator("#changes")
    expect(changes).to_be_visible()
    expect(changes.locator("h2")).to_have_text("Since the last note (Progress note, 2026-08-03)")
    expect(changes).to_contain_text("HbA1c 8.3% on 2026-10-20 (was 7.9%)")
    expect(changes).to_contain_text("Started empagliflozin 10 MG Oral Tablet on 2026-10-25")
    expect(changes).to_contain_text("Gout, onset 2026-09-15")
    assert changes.locator("button.citation").count() >= 15  # every item cites its sources

    layout = page.evaluate(
        """() => {
          const main = document.querySelector('#main');
          const cards = [...document.querySelectorAll('#suggestion-list > .card')];
          const top = (el) => el.getBoundingClientRect().top + window.scrollY;
          const bottom = (el) => el.getBoundingClientRect().bottom + window.scrollY;
          return {
            viewport: [window.innerWidth, window.innerHeight],
            scrollWidth: document.documentElement.scrollWidth,
            summaryFirst: main.firstElementChild.id,
            summaryTop: top(document.querySelector('#changes')),
            summaryBottom: bottom(document.querySelector('#changes')),
            firstCardTop: top(cards[0]),
            end: bottom(cards[cards.length - 1]),
            footer: document.querySelector('.app-footer').getBoundingClientRect().height,
            cards: cards.map((card) => {
              const lead = card.querySelector('.card-lead');
              const box = lead.getBoundingClientRect();
              return {
                expanded: card.querySelector('.card-toggle').getAttribute('aria-expanded'),
                lead: lead.textContent,
                leadVisible: box.width > 0 && box.height > 0,
                first: card.querySelector('.statement-text').textContent,
                detailsShown: !card.querySelector('.card-details').hidden,
              };
            }),
          };
        }"""
    )
    screenshot(page, "sidebar_15_problems_420px.png", full_page=True)
    assert layout["viewport"] == [WIDTH, HEIGHT]
    assert layout["scrollWidth"] <= WIDTH  # nothing wider than the sidebar
    assert layout["summaryFirst"] == "changes"
    assert layout["summaryBottom"] <= layout["firstCardTop"]
    for card in layout["cards"]:
        # Closed, showing its first line (the first statement) and nothing more.
        assert card["expanded"] == "false"
        assert not card["detailsShown"]
        assert card["leadVisible"] and card["lead"] == card["first"], card
    # The summary and the first line of every card end within two screens. The note's
    # footer is sticky, so a screen shows the viewport less the footer: two of those.
    screen = HEIGHT - layout["footer"]
    assert layout["footer"] < HEIGHT / 8
    assert layout["end"] <= 2 * screen, (layout["end"], screen)


def test_a_card_opens_with_a_key_or_a_click_and_says_so(sidebar: Any):
    page = sidebar
    cards = page.locator("#suggestion-list > .card")
    keys = page.keyboard
    keys.press("j")
    first = cards.nth(0)
    expect(first).to_be_focused()
    toggle = first.locator(".card-toggle")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(first.locator(".card-actions")).to_be_hidden()
    keys.press("o")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    details = first.locator(f"#{toggle.get_attribute('aria-controls')}")
    expect(details).to_be_visible()
    expect(details.locator(".statement")).to_have_count(15)  # one line per problem
    expect(first.locator(".card-actions button.accept")).to_be_visible()
    expect(first).to_be_focused()  # the keys still act on this card
    # Focus order: the heading, then what it opened, then the decisions.
    toggle.focus()
    keys.press("Tab")
    assert page.evaluate("document.activeElement.closest('.card-details') !== null")
    keys.press("Escape")
    first.focus()
    keys.press("o")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(details).to_be_hidden()

    # Enter on a card opens it too; J moves on without opening the next.
    keys.press("j")
    second = cards.nth(1)
    expect(second).to_be_focused()
    keys.press("Enter")
    expect(second.locator(".card-toggle")).to_have_attribute("aria-expanded", "true")
    expect(cards.nth(2).locator(".card-toggle")).to_have_attribute("aria-expanded", "false")

    # A problem card's closed line is its status; opened, it shows its title and the rest.
    plan = page.locator("#suggestion-list > .card[data-kind=assessment_plan]").first
    # (The onset of a problem older than the trend window is on the problem list, not here.)
    expect(plan.locator(".card-lead")).to_have_text("Essential hypertension")
    plan.locator(".card-toggle").click()
    expect(plan.locator(".card-title")).to_be_visible()
    expect(plan.locator(".card-title")).to_contain_text("Essential hypertension")
    expect(plan.locator(".statement-text").nth(1)).to_contain_text("BP 138/82 mmHg on 2026-11-10")
    screenshot(page, "sidebar_15_problems_open.png")
