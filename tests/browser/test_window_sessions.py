"""Browser: the sidebar when Chromium blocks the app's cookies in the EHR's frame, two charts
in two tabs of one browser, and signing out from the sidebar.

Chromium's own cookie setting blocks every cookie of the app's origin (127.0.0.1) while it
is embedded in the EHR's pages (localhost), partitioned ones included, as an embedded
WebView2 that blocks third-party cookies does; the app then carries the launch in a
per-window token. Nothing is patched or intercepted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from smartapp.feedback.models import ShownSuggestion
from smartapp.smart.models import LaunchSession
from smartapp.stack import Stack
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.browser.test_sidebar_flows import app_frame, notes_in_chart, open_card, open_chart
from tests.integration.conftest import start_stack

pytestmark = pytest.mark.browser

VIEWPORT = {"width": 1400, "height": 1000}


@pytest.fixture
def stack(tmp_path: Path, sandbox_template: Path) -> Iterator[Stack]:
    running = start_stack(tmp_path, sandbox_template)
    yield running
    running.stop()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@pytest.fixture
def cookieless(chromium, stack: Stack, tmp_path: Path) -> Iterator[Any]:
    """A Chromium profile that blocks all of the app's cookies inside the EHR's pages."""
    profile = tmp_path / "chromium-profile"
    (profile / "Default").mkdir(parents=True)
    pattern = f"{_origin(stack.app_url)},{_origin(stack.ehr_url)}"
    # Content setting 2 = block, for the app's origin (primary) inside the EHR's (secondary).
    blocked = {"cookies": {pattern: {"setting": 2}}}
    prefs = {"profile": {"content_settings": {"exceptions": blocked}}}
    (profile / "Default" / "Preferences").write_text(json.dumps(prefs), encoding="utf-8")
    context = chromium.browser_type.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        args=CHROMIUM_ARGS,
        headless=True,
        viewport=VIEWPORT,
    )
    yield context
    context.close()


@pytest.fixture
def with_cookies(chromium) -> Iterator[Any]:
    context = chromium.new_context(viewport=VIEWPORT)
    yield context
    context.close()


def app_requests(page: Any, stack: Stack) -> list[Any]:
    """Every request the page makes to the app, kept as it goes."""
    seen: list[Any] = []
    page.on("request", lambda r: seen.append(r) if r.url.startswith(stack.app_url) else None)
    return seen


def sessions(stack: Stack) -> list[LaunchSession]:
    with stack.app.extensions["smartapp.db"].session() as s:
        return list(s.scalars(select(LaunchSession)))


def decided_patients(stack: Stack) -> list[str]:
    with stack.app.extensions["smartapp.db"].session() as s:
        rows = s.scalars(select(ShownSuggestion)).all()
        return sorted({row.patient_id for row in rows if row.decisions})


def test_blocked_cookies_launch_decide_and_save_a_note(cookieless, stack: Stack):
    page = cookieless.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    seen = app_requests(page, stack)
    sidebar = open_chart(page, stack, "pt-01")
    frame = app_frame(page, stack)
    # The callback's page is the sidebar; the spent code and state leave the address bar.
    assert frame.url == f"{stack.app_url}/"
    # Chromium really kept none of the app's cookies.
    assert cookieless.cookies(stack.app_url) == []

    card = open_card(sidebar.locator("#suggestion-list > .card").first)
    card.locator("button.accept").click()
    expect(card).to_have_attribute("data-decision", "accept")
    sidebar.locator("#save-note").click()
    status = sidebar.locator("#save-status[data-kind=ok]")
    status.wait_for(timeout=15_000)
    assert "Saved to the chart" in status.inner_text()
    assert len(notes_in_chart(stack, "pt-01")) == 1
    # The EHR's SMART style still applies (fetched with the token, not by the <link>).
    assert frame.evaluate("getComputedStyle(document.body).backgroundColor") == (
        "rgb(245, 247, 250)"
    )

    api_calls = [r for r in seen if urlsplit(r.url).path.startswith("/api/")]
    assert api_calls
    tokens = {r.all_headers().get("x-window-token") for r in api_calls}
    assert len(tokens) == 1 and None not in tokens
    [token] = tokens
    assert all("cookie" not in r.all_headers() for r in seen)
    # The token is never in a URL (the address bar, history, a proxy's log).
    assert all(token not in r.url for r in seen)
    assert token not in frame.url
    assert not [m for m in console if "Content Security Policy" in m], console

    # Sign out by keyboard: the window's launch ends, server-side.
    sidebar.locator("#help-button").focus()
    page.keyboard.press("Tab")
    expect(sidebar.locator("#sign-out")).to_be_focused()
    page.keyboard.press("Enter")
    expect(sidebar.locator("#signed-out")).to_be_visible()
    assert sessions(stack) == []


def test_two_charts_in_two_tabs_without_cookies_keep_their_patients(cookieless, stack: Stack):
    first, second = cookieless.new_page(), cookieless.new_page()
    sidebar_one = open_chart(first, stack, "pt-01")
    sidebar_two = open_chart(second, stack, "pt-02")
    assert len(sessions(stack)) == 2  # the second launch replaced nothing

    # The first tab goes on with its own patient after the second opened another chart.
    card = open_card(sidebar_one.locator("#suggestion-list > .card").first)
    card.locator("button.accept").click()
    expect(card).to_have_attribute("data-decision", "accept")
    assert decided_patients(stack) == ["pt-01"]
    card = open_card(sidebar_two.locator("#suggestion-list > .card").first)
    card.locator("button.accept").click()
    expect(card).to_have_attribute("data-decision", "accept")
    assert decided_patients(stack) == ["pt-01", "pt-02"]

    # Reading the chart again in the first tab reads the first patient's chart.
    sidebar_one.locator("#refresh").click()
    sidebar_one.locator("#refresh-anyway").click()
    sidebar_one.locator("#suggestion-list > .card").first.wait_for()
    frame_one = app_frame(first, stack)
    context = frame_one.evaluate(
        """async () => (await import('/static/js/api.js')).api.context().then(r => r.data)"""
    )
    assert context["patient"]["id"] == "pt-01"


def test_two_charts_in_two_tabs_with_cookies_never_show_the_other_patient(
    with_cookies, stack: Stack
):
    """With cookies the browser has one launch: the older tab is told so, never shown the
    newer tab's patient."""
    first, second = with_cookies.new_page(), with_cookies.new_page()
    sidebar_one = open_chart(first, stack, "pt-01")
    open_chart(second, stack, "pt-02")

    # A decision in the older tab is refused (its CSRF token is the replaced launch's)...
    card = open_card(sidebar_one.locator("#suggestion-list > .card").first)
    card.locator("button.accept").click()
    # (it is told to open the app again from its chart: reloading the frame would load the
    # browser's newer launch, the other patient, into this chart's frame).
    expect(card.locator(".card-message")).to_contain_text("belongs to an earlier launch")
    expect(card.locator(".card-message")).not_to_contain_text("Reload")
    assert decided_patients(stack) == []
    # ...and what it reads is refused too, saying why, instead of the other patient's chart.
    answer = app_frame(first, stack).evaluate(
        """async () => (await import('/static/js/api.js')).api.context()
              .then(r => r.data.patient.id, e => `${e.status} ${e.message}`)"""
    )
    assert answer.startswith("401 ") and "belongs to an earlier launch" in answer


def test_sign_out_by_keyboard_ends_the_launch_and_revokes_at_the_ehr(with_cookies, stack: Stack):
    page = with_cookies.new_page()
    seen = app_requests(page, stack)
    sidebar = open_chart(page, stack, "pt-01")
    sign_out = sidebar.locator("#sign-out")
    expect(sign_out).to_be_visible()
    sidebar.locator("#help-button").focus()
    page.keyboard.press("Tab")
    expect(sign_out).to_be_focused()
    page.keyboard.press("Enter")

    done = sidebar.locator("#signed-out")
    expect(done).to_be_visible()
    expect(done).to_be_focused()
    expect(done).to_contain_text("here and at the EHR")  # the EHR took the revocation
    expect(sidebar.locator("#app")).to_be_hidden()
    [logout] = [r for r in seen if urlsplit(r.url).path == "/logout"]
    assert logout.method == "POST"
    assert logout.all_headers()["x-csrf-token"]
    assert sessions(stack) == []
    # The sidebar's API is closed to this browser now.
    status = app_frame(page, stack).evaluate(
        "fetch('/api/context', {credentials: 'same-origin'}).then(r => r.status)"
    )
    assert status == 401
