"""Browser: the sandbox EHR shows the app's CDS Hooks card; its link opens the sidebar on
the chart the hook read, with no FHIR read from the app (counted on the sandbox side)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from smartapp.stack import Stack
from tests.browser.conftest import screenshot
from tests.integration.conftest import start_stack

pytestmark = pytest.mark.browser


@pytest.fixture
def stack(tmp_path: Path, sandbox_template: Path) -> Iterator[Stack]:
    running = start_stack(tmp_path, sandbox_template, cds_hooks=True)
    yield running
    running.stop()


def test_the_cards_link_opens_the_sidebar_without_reading_the_chart(chromium, stack: Stack):
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        page.goto(f"{stack.ehr_url}/patients/pt-01")
        card = page.get_by_test_id("cds-card")
        assert "smartapp" in card.inner_text()
        sidebar = page.frame_locator("iframe")
        # The sidebar's own launch (the EHR opens it with the chart) reads the chart first.
        sidebar.locator(".card").first.wait_for(timeout=30_000)
        requests.post(f"{stack.ehr_url}/_sandbox/stats/reset", timeout=10).raise_for_status()
        with page.expect_response(
            lambda r: r.url.endswith("/api/suggestions") and r.status == 200, timeout=30_000
        ):
            card.get_by_test_id("cds-card-link").click()
        sidebar.locator(".card").first.wait_for(timeout=30_000)
        screenshot(page, "cds_card_sidebar.png")
        stats = requests.get(f"{stack.ehr_url}/_sandbox/stats", timeout=10).json()
        assert stats["fhir"] == 0, stats
        assert stats["kinds"].get("token") == 1
    finally:
        context.close()
