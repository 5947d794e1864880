"""Browser (Chromium): "About this suggestion" by one key, and back, in the sandbox EHR."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from smartapp.stack import Stack
from tests.browser.conftest import screenshot
from tests.browser.test_sidebar_flows import open_card, open_chart, sidebar_clip
from tests.integration.conftest import start_stack

pytestmark = pytest.mark.browser


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    yield context.new_page()
    context.close()


@pytest.fixture
def stack(tmp_path: Path, sandbox_template: Path) -> Iterator[Stack]:
    running = start_stack(tmp_path, sandbox_template)
    yield running
    running.stop()


def test_one_key_opens_the_source_attributes_and_esc_returns_to_the_card(page, stack):
    sidebar = open_chart(page, stack, "pt-01")
    card = sidebar.locator("#suggestion-list > .card").first
    card.focus()
    page.keyboard.press("i")
    about = sidebar.locator("#about")
    expect(about).to_be_visible()
    expect(about.get_by_role("heading", name="About this suggestion")).to_be_visible()
    expect(about.locator(".about-engine")).to_contain_text("builtin-rules")
    expect(about.locator(".about-attributes").first).to_contain_text("Intended use")
    expect(about.locator(".about-attributes").first).to_contain_text("Validation on local data")
    expect(about.locator("#about-close")).to_be_focused()
    screenshot(page, "sidebar_about.png", clip=sidebar_clip(page))
    page.keyboard.press("Escape")
    expect(about).to_be_hidden()
    expect(card).to_be_focused()
    # The same from the open card's button, for a pointer; the keys list names the key.
    open_card(card)
    card.get_by_role("button", name="About this suggestion").click()
    expect(about).to_be_visible()
    about.get_by_role("button", name="Close").click()
    expect(about).to_be_hidden()
    sidebar.locator("#help-button").click()
    expect(sidebar.locator("#help-rows")).to_contain_text("About this suggestion")
