"""Browser (Chromium): the clinician pulse after a sampled saved note, by keyboard."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect

from smartapp.notes.pulse import PulseResponse
from tests.browser.conftest import screenshot
from tests.browser.test_sidebar_flows import open_chart, sidebar_clip
from tests.integration.conftest import app_environ, start_stack

pytestmark = pytest.mark.browser


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    yield context.new_page()
    context.close()


@pytest.fixture
def pulse_stack(tmp_path: Path, sandbox_template: Path):
    config = tmp_path / "site.toml"
    config.write_text("[governance]\npulse_every = 1\n")
    running = start_stack(
        tmp_path, sandbox_template, environ=app_environ(tmp_path, SMARTAPP_CONFIG=str(config))
    )
    yield running
    running.stop()


def test_the_pulse_is_answered_after_a_saved_note(page, pulse_stack):
    sidebar = open_chart(page, pulse_stack, "pt-01")
    first = sidebar.locator("#suggestion-list > .card").first
    first.locator(".card-toggle").click()  # a card opens to its decisions
    first.locator("button.accept").click()
    sidebar.locator("#save-note").click()
    expect(sidebar.locator("#save-status[data-kind=ok]")).to_be_visible(timeout=20_000)
    pulse = sidebar.locator("#pulse")
    expect(pulse).to_be_visible()
    expect(pulse).to_contain_text("Did this draft save you time?")
    screenshot(page, "sidebar_pulse.png", clip=sidebar_clip(page))
    # Keyboard: focus the first question's scores, arrow to 4; then the second, choose 2.
    pulse.locator("fieldset[data-question=savedTime] input").first.focus()
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    pulse.locator("fieldset[data-question=checking] input").nth(1).check()
    pulse.get_by_role("button", name="Send").click()
    expect(pulse).to_contain_text("Thank you")
    with pulse_stack.app.extensions["smartapp.db"].session() as s:
        [row] = s.query(PulseResponse).all()
        assert (row.saved_time, row.checking, row.skipped) == (4, 2, False)
