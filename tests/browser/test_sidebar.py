"""Browser: the sandbox EHR page in real Chromium, the app in its cross-site sidebar iframe."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from smartapp.stack import Stack
from tests.browser.conftest import screenshot
from tests.integration.conftest import start_stack

pytestmark = pytest.mark.browser


@pytest.fixture
def stack(tmp_path: Path, sandbox_template: Path) -> Iterator[Stack]:
    running = start_stack(tmp_path, sandbox_template)
    yield running
    running.stop()


@pytest.fixture
def ehr_page(chromium, stack: Stack):
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    yield page, console
    context.close()


def open_patient(page, stack: Stack, name: str):
    page.goto(f"{stack.ehr_url}/")
    page.get_by_role("link", name=name).first.click()
    sidebar = page.frame_locator("iframe")
    sidebar.locator(".card").first.wait_for(timeout=30_000)
    return sidebar


def test_launch_accept_and_save_a_note_from_the_ehr_page(ehr_page, stack: Stack):
    page, console = ehr_page
    sidebar = open_patient(page, stack, "Amara Okafor")
    # The app really is cross-site: the EHR on localhost, the app on 127.0.0.1.
    frame = next(f for f in page.frames if f.url.startswith(stack.app_url))
    assert frame.url == f"{stack.app_url}/"

    first = sidebar.locator(".card").first
    title = first.locator(".card-title").inner_text()
    statement = first.locator(".statement-text").first.inner_text()
    first.locator(".card-toggle").click()  # a card opens to its decisions
    first.locator("button.accept").click()
    # The decision is shown once the server has recorded it (an async request).
    expect(first).to_have_attribute("data-decision", "accept")
    sidebar.locator("#save-note").click()
    status = sidebar.locator("#save-status[data-kind=ok]")
    status.wait_for(timeout=15_000)
    assert "Saved to the chart" in status.inner_text()
    screenshot(page, "sidebar_note_saved.png")

    docs = requests.get(
        f"{stack.ehr_url}/_sandbox/resources/DocumentReference",
        params={"patient": "pt-01"},
        timeout=10,
    ).json()
    ours = [
        d
        for d in docs
        if any(s.get("code") == "AIAST" for s in d.get("meta", {}).get("security", []))
    ]
    assert len(ours) == 1
    text = base64.b64decode(ours[0]["content"][0]["attachment"]["data"]).decode()
    # The card's statement, under a section heading; never the card's title or engine label.
    # A cross-reference to a card left out of the note is left out with it (composer).
    statement = re.sub(r" \(see [^)]*\)$", "", statement)
    assert statement in text and title not in text
    assert not [m for m in console if "Content Security Policy" in m], console
