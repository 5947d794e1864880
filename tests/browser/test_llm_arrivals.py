"""Browser: with the site's problem summary on an LLM that has not answered yet, the sidebar
shows the rules' draft at once, keeps the clinician's decision on it, and puts the LLM's card
in place when it arrives (the sidebar polls `/api/suggestions/pending`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from smartapp.stack import Stack
from tests.integration.conftest import app_environ, start_stack
from tests.unit.notes.llm_support import HeldLLM, held_llm

pytestmark = pytest.mark.browser

SITE = """
[suggestions]
kinds = ["problem_summary", "medications"]

[kinds.problem_summary]
engine = "llm"

[llm]
model = "fake-model"
version = "2026-11-01"
timeout_seconds = 60
"""


@pytest.fixture
def llm_stack(tmp_path: Path, sandbox_template: Path) -> Iterator[tuple[Stack, HeldLLM]]:
    site = tmp_path / "site.toml"
    site.write_text(SITE, encoding="utf-8")
    with held_llm() as (fake, base):
        environ = app_environ(
            tmp_path,
            SMARTAPP_CONFIG=str(site),
            SMARTAPP_LLM_BASE_URL=base,
            SMARTAPP_LLM_MODEL="fake-model",
        )
        running = start_stack(tmp_path, sandbox_template, environ=environ)
        try:
            yield running, fake
        finally:
            fake.release.set()
            running.app.extensions["smartapp.engines"].close()
            running.stop()


def test_the_llm_card_replaces_the_rules_in_place_and_a_decision_is_kept(
    chromium: Any, llm_stack: tuple[Stack, HeldLLM]
) -> None:
    stack, fake = llm_stack
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.goto(f"{stack.ehr_url}/")
        page.get_by_role("link", name="Amara Okafor").first.click()
        sidebar = page.frame_locator("iframe")
        waiting = sidebar.locator(".card", has_text="AI draft on its way")
        waiting.first.wait_for(timeout=30_000)
        assert fake.answered == 0  # shown while the LLM still holds the request
        decided = waiting.first
        decided_title = decided.locator(".card-title").inner_text()
        decided.locator(".card-toggle").click()  # a card opens to its decisions
        decided.locator("button.accept").click()
        expect(decided).to_have_attribute("data-decision", "accept")

        fake.release.set()
        ai_card = sidebar.locator(".card", has=sidebar.locator(".badge-ai"))
        ai_card.first.wait_for(timeout=30_000)
        assert "is on the problem list" in ai_card.first.inner_text()
        kept = sidebar.locator(".card", has_text="Rule-based draft kept")
        expect(kept).to_have_count(1)
        expect(kept.first).to_have_attribute("data-decision", "accept")
        assert kept.first.locator(".card-title").inner_text() == decided_title
        expect(sidebar.locator(".card", has_text="AI draft on its way")).to_have_count(0)
    finally:
        context.close()
