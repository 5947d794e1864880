"""Unit (Flask test client): the admin pages — sign-in, refusal, the dashboard's charts,
escaping of chart data, and the audited drill-down."""

from __future__ import annotations

import re

import pytest

from smartapp.audit import AuditQuery, search
from tests.unit.admin.conftest import ADMIN_1, CLINICIAN
from tests.unit.admin.seed import W47, Seeded, add_suggestion, seed_feedback

PAGES = ("/admin", "/admin/flagged", "/admin/rollout", "/admin/engines", "/admin/audit")


@pytest.fixture
def seeded(admin_app):
    with admin_app.extensions["smartapp.db"].session() as s:
        seed_feedback(s)
    return admin_app


def audit_actions(app):
    with app.extensions["smartapp.db"].session() as s:
        events, _ = search(s, AuditQuery())
    return [e.action for e in events]


@pytest.mark.parametrize("path", PAGES)
def test_without_a_session_every_page_offers_the_ehr_sign_in(api, path):
    response = api.get(path)
    assert response.status_code == 401
    html = response.get_data(as_text=True)
    assert 'action="/admin/signin"' in html
    assert 'name="iss" value="http://ehr.test/fhir"' in html


def test_sign_in_starts_a_standalone_launch_at_an_allowed_issuer_only(api, identity):
    response = api.get("/admin/signin?iss=http://ehr.test/fhir/")
    assert response.status_code == 302
    assert identity.signins == ["http://ehr.test/fhir"]
    refused = api.get("/admin/signin?iss=https://evil.example/fhir")
    assert refused.status_code == 400
    assert identity.signins == ["http://ehr.test/fhir"]


@pytest.mark.parametrize("path", PAGES)
def test_a_non_admin_is_refused_and_the_attempt_audited(api, identity, path):
    identity.sign_in(CLINICIAN)
    response = api.get(path)
    assert response.status_code == 403
    assert "Not allowed" in response.get_data(as_text=True)
    assert audit_actions(api.application) == ["admin.denied"]


def test_dashboard_renders_charts_for_each_grouping(seeded, identity):
    identity.sign_in(ADMIN_1)
    response = seeded.test_client().get("/admin?pivot=2026-11-23")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    for chart in (
        "chart-kind",
        "chart-site",
        "chart-engine",
        "chart-week",
        "chart-edit-distance",
        "chart-seconds",
        "chart-notes",
        "chart-compare",
    ):
        assert f'id="{chart}"' in html, chart
    assert html.count('class="seg seg-accept"') >= 4
    assert '<meta name="csrf-token" content="csrf-token-for-admin-tests">' in html
    assert "2026-W47" in html and "builtin-rules 1.0.0" in html
    # CSP-friendly: no inline script or style anywhere on the page.
    assert "style=" not in html and "<style" not in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert response.headers["Cache-Control"] == "no-store"


def test_dashboard_shows_time_in_the_sidebar_next_to_launch_to_note(seeded, identity):
    identity.sign_in(ADMIN_1)
    html = seeded.test_client().get("/admin?pivot=2026-11-23").get_data(as_text=True)
    saving = html[html.index('id="saving-h"') : html.index('id="saving-by-kind"')]
    assert "in the sidebar (median)" in saving
    # Site A's one note: launched 4 min before it was saved, the sidebar visible 90 s of it.
    row = re.search(
        r'<th scope="row" class="mono">https://a\.example/fhir</th>(.*?)</tr>', saving, re.S
    )
    assert row is not None
    cells = re.findall(r"<td>(.*?)</td>", row.group(1))
    assert cells[:3] == ["1", "240 s", "90 s"]


def test_dashboard_highlights_the_outlier_site(admin_app, identity):
    with admin_app.extensions["smartapp.db"].session() as s:
        sites = [(f"https://s{k}.example/fhir", 30) for k in range(6)]
        sites.append(("https://odd.example/fhir", 5))  # 10 % used where the others use 60 %
        n = 0
        for site, used in sites:
            for j in range(50):
                n += 1
                action = "accept" if j < used else "reject"
                seeded = Seeded("summary", site, ("llm", "1"), W47, ((action, 5, 0),))
                add_suggestion(s, seeded, number=n)
    identity.sign_in(ADMIN_1)
    html = admin_app.test_client().get("/admin").get_data(as_text=True)
    table = html[html.index('id="variance-acceptance"') :]
    table = table[: table.index("</table>")]
    outliers = re.findall(
        r'<tr class="outlier">\s*<th scope="row" class="mono">([^<]+)</th>', table
    )
    assert outliers == ["https://odd.example/fhir"]


def test_chart_data_is_escaped(admin_app, identity):
    evil = '<script>alert("x")</script>'
    with admin_app.extensions["smartapp.db"].session() as s:
        add_suggestion(
            s,
            Seeded(
                evil, "https://a.example/fhir", ("llm", '"><img src=x>'), W47, (("flag", 5, None),)
            ),
            number=1,
            text=evil,
        )
    identity.sign_in(ADMIN_1)
    client = admin_app.test_client()
    for path in ("/admin", "/admin/flagged", "/admin/flagged/s001"):
        html = client.get(path).get_data(as_text=True)
        assert evil not in html and "<img src=x>" not in html, path
        assert "&lt;script&gt;" in html, path


def test_flagged_drill_down_is_audited(seeded, identity):
    identity.sign_in(ADMIN_1)
    client = seeded.test_client()
    listing = client.get("/admin/flagged").get_data(as_text=True)
    assert "/admin/flagged/s005" in listing and "Suggested text" not in listing
    assert "admin.flagged.view" not in audit_actions(seeded)
    detail = client.get("/admin/flagged/s005")
    assert detail.status_code == 200
    assert "Suggested text" in detail.get_data(as_text=True)
    assert audit_actions(seeded).count("admin.flagged.view") == 1


def test_other_admin_pages_render(seeded, identity):
    identity.sign_in(ADMIN_1)
    client = seeded.test_client()
    client.post(
        "/admin/api/rollout",
        json={"site": "*", "kind": "problem_summary", "percentage": 30},
        headers={"X-CSRF-Token": "csrf-token-for-admin-tests"},
    )
    rollout = client.get("/admin/rollout?site=http://ehr.test/fhir&kind=problem_summary&fhir_user=")
    assert rollout.status_code == 200
    assert 'data-enabled="false"' in rollout.get_data(as_text=True)  # no fhirUser: not placed
    engines = client.get("/admin/engines")
    assert engines.status_code == 200 and "Propose a version" in engines.get_data(as_text=True)
    audit = client.get("/admin/audit?action=rollout.")
    assert audit.status_code == 200 and "rollout.set" in audit.get_data(as_text=True)
    bad = client.get("/admin?from=not-a-date")
    assert bad.status_code == 400 and "from:" in bad.get_data(as_text=True)
