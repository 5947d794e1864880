"""Browser: the governance dashboard in real Chromium — charts drawn and styled under the
app's CSP, a form that changes a rollout rule, and a non-admin refused.

The SMART sign-in is replaced through the admin identity seam (`auth.IDENTITY_EXT`): the
test names the signed-in user with a cookie only this test's provider reads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask, request
from waitress import create_server

from smartapp.admin.auth import SignedInUser, set_identity_provider
from smartapp.security import register_csrf_lookup
from tests.unit.admin.conftest import ADMIN_1, CLINICIAN, FakeIdentity, make_admin_app
from tests.unit.admin.seed import W47, Seeded, add_suggestion, seed_feedback

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CSRF = "browser-test-csrf"
USER_COOKIE = "admin_test_user"

pytestmark = pytest.mark.browser


def _cookie_identity() -> SignedInUser | None:
    user = request.cookies.get(USER_COOKIE)
    return (
        SignedInUser(fhir_user=user, site="http://ehr.test/fhir", csrf_token=CSRF) if user else None
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Flask]]:
    app = make_admin_app(tmp_path, FakeIdentity())
    set_identity_provider(app, _cookie_identity)
    register_csrf_lookup(app, lambda: CSRF if request.cookies.get(USER_COOKIE) else None)
    with app.extensions["smartapp.db"].session() as s:
        seed_feedback(s)
        # Six sites using 60 % and one using 5 %: the variance table has an outlier to show.
        sites = [(f"https://s{k}.example/fhir", 30, 50) for k in range(6)]
        sites.append(("https://c.example/fhir", 3, 60))
        n = 100
        for site, used, shown in sites:
            for j in range(shown):
                n += 1
                action = "accept" if j < used else "reject"
                seeded = Seeded("summary", site, ("llm", "m@2"), W47, ((action, 9, 0),))
                add_suggestion(s, seeded, number=n)
    srv = create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.effective_port}", app
    finally:
        srv.close()
        thread.join(timeout=5)
        app.extensions["smartapp.db"].dispose()


@pytest.fixture
def browser(chromium):
    """The session's Chromium (tests/browser/conftest.py): a second Playwright in the same
    process fails once another browser test has started the first."""
    return chromium


def signed_in_page(browser, base: str, user: str | None):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    if user:
        context.add_cookies([{"name": USER_COOKIE, "value": user, "url": base}])
    page = context.new_page()
    messages: list[str] = []
    page.on("console", lambda msg: messages.append(msg.text))
    return page, messages


def test_dashboard_renders_its_charts(server, browser):
    base, _app = server
    page, console = signed_in_page(browser, base, ADMIN_1)
    response = page.goto(f"{base}/admin?pivot=2026-11-23")
    assert response is not None and response.status == 200
    for chart in ("chart-kind", "chart-site", "chart-engine", "chart-week", "chart-compare"):
        assert page.locator(f"svg#{chart} rect").count() > 0, chart
    # The segment colours come from admin.css: the stylesheet loaded under the CSP.
    fill = page.eval_on_selector("svg#chart-kind rect.seg-accept", "e => getComputedStyle(e).fill")
    assert fill == "rgb(29, 107, 50)"
    box = page.locator("svg#chart-kind").bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 40
    outlier = page.locator("#variance-acceptance tr.outlier th")
    assert outlier.all_inner_texts() == ["https://c.example/fhir"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin_dashboard.png"), full_page=True)
    assert not [m for m in console if "Content Security Policy" in m], console


def test_rollout_form_changes_a_rule(server, browser):
    base, _app = server
    page, console = signed_in_page(browser, base, ADMIN_1)
    page.goto(f"{base}/admin/rollout")
    form = page.locator("form[data-api='/admin/api/rollout']")
    form.locator("input[name=kind]").fill("care_gaps")
    form.locator("input[name=percentage]").fill("30")
    form.locator("input[name=reason]").fill("pilot at 30 %")
    with page.expect_navigation():
        form.locator("button[type=submit]").click()
    row = page.locator("table.rules tbody tr").first
    assert "care_gaps" in row.inner_text() and "30%" in row.inner_text()
    assert not [m for m in console if "Content Security Policy" in m], console


def test_a_non_admin_is_refused(server, browser):
    base, _app = server
    page, _ = signed_in_page(browser, base, CLINICIAN)
    response = page.goto(f"{base}/admin")
    assert response is not None and response.status == 403
    assert page.locator("h1").inner_text() == "Not allowed"
    assert page.locator("svg.chart").count() == 0

    anonymous, _ = signed_in_page(browser, base, None)
    response = anonymous.goto(f"{base}/admin")
    assert response is not None and response.status == 401
    assert anonymous.locator("button", has_text="Sign in with http://ehr.test/fhir").count() == 1


def test_inside_vs_outside_shows_the_note_composition_with_intervals(server, browser):
    """The concurrent control's table in Chromium: every measure a row, the composition in
    percent with its interval, and the table within the page's width."""
    import random

    from tests.unit.admin.test_control import KIND, _note

    base, app = server
    rng = random.Random(7)
    with app.extensions["smartapp.db"].session() as s:
        for n in range(60):
            arm = "inside" if n % 2 == 0 else "outside"
            total = rng.randint(800, 2000)
            accepted = int(total * (rng.uniform(0.4, 0.6) if arm == "inside" else 0.0))
            edited = int(total * (rng.uniform(0.1, 0.2) if arm == "inside" else 0.05))
            _note(
                s,
                500 + n,
                user=f"Practitioner/c{n % 24}",
                arms={KIND: arm},
                seconds=rng.uniform(200, 400) if arm == "inside" else rng.uniform(350, 600),
                edits=rng.randint(0, 3),
                chars=(total, accepted, edited),
            )
    page, console = signed_in_page(browser, base, ADMIN_1)
    response = page.goto(f"{base}/admin")
    assert response is not None and response.status == 200
    table = page.locator("#rollout-control table.control").first
    rows = table.locator("tbody tr")
    assert [r.get_attribute("data-measure") for r in rows.all()] == [
        "median_seconds_launch_to_note",
        "edits_per_note",
        "accepted_share_of_note_chars",
        "edited_share_of_note_chars",
        "typed_share_of_note_chars",
    ]
    accepted = table.locator('tr[data-measure="accepted_share_of_note_chars"] td').all_inner_texts()
    inside, inside_ci, outside, outside_ci, difference, difference_ci = accepted
    assert inside.endswith("%") and outside == "0.0%"
    assert " to " in inside_ci and difference.startswith("+") and difference.endswith(" pts")
    assert difference_ci.endswith(" pts")
    box = table.bounding_box()
    section = page.locator("#rollout-control").bounding_box()
    assert box is not None and section is not None
    assert box["x"] + box["width"] <= section["x"] + section["width"] + 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#rollout-control").screenshot(path=str(ARTIFACTS / "rollout_control.png"))
    assert not [m for m in console if "Content Security Policy" in m], console
