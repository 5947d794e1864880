"""Unit (Flask test client): the review workflow for flagged suggestions, triage to closed."""

from __future__ import annotations

import pytest

from smartapp.audit import AuditQuery, search
from smartapp.audit.models import AppendOnlyError
from smartapp.governance.models import FlagReviewEvent
from tests.unit.admin.conftest import ADMIN_1, ADMIN_2, bearer, csrf, who
from tests.unit.admin.seed import seed_feedback


@pytest.fixture
def seeded(admin_app):
    with admin_app.extensions["smartapp.db"].session() as s:
        seed_feedback(s)
    return admin_app


def review(client, step, **fields):
    return client.post(
        "/admin/api/flagged/s005/review", json={"step": step, **fields}, headers=csrf()
    )


def test_a_flagged_item_is_triaged_assigned_and_closed_with_its_fix(seeded, identity):
    client = seeded.test_client()
    [item] = client.get("/admin/api/flagged", headers=bearer()).get_json()["flagged"]
    assert item["review"]["status"] == "open" and item["review"]["age_days"] >= 0

    identity.sign_in(ADMIN_1)
    assert review(client, "triage", severity="high").get_json()["review"]["status"] == "triaged"
    assigned = review(client, "assign", assignee=ADMIN_2).get_json()["review"]
    assert (assigned["status"], assigned["assignee"]) == ("assigned", ADMIN_2)
    identity.sign_in(ADMIN_2)
    assert review(client, "comment", comment="dose came from free text").status_code == 200

    # The fix is a rollout rule that turns the kind off at the site: the review links it.
    rule = client.post(
        "/admin/api/rollout",
        json={"site": "https://a.example/fhir", "kind": "care_gaps", "enabled": False},
        headers=csrf(),
    ).get_json()["rule"]
    bad = review(client, "close", close_action="engine_fix", linked_change="no-such-change")
    assert bad.status_code == 400 and "linked_change" in bad.get_json()["error"]["message"]
    closed = review(
        client, "close", close_action="site_configuration", linked_change=rule["id"]
    ).get_json()["review"]
    assert closed["status"] == "closed" and closed["linked_change"] == rule["id"]
    assert [e["step"] for e in closed["events"]] == ["triage", "assign", "comment", "close"]
    assert [e["actor"] for e in closed["events"]][-1] == who(ADMIN_2)

    # Closed items leave the default list and keep their age fixed.
    identity.sign_out()
    unclosed = client.get("/admin/api/flagged?status=unclosed", headers=bearer()).get_json()
    assert unclosed["flagged"] == []
    [done] = client.get("/admin/api/flagged?status=closed", headers=bearer()).get_json()["flagged"]
    assert done["review"]["close_action"] == "site_configuration"
    assert "comment" not in str(done)  # the list carries no review comments either

    with seeded.extensions["smartapp.db"].session() as s:
        steps = [e.detail["step"] for e in search(s, AuditQuery(action="admin.flagged.review"))[0]]
    assert sorted(steps) == ["assign", "close", "comment", "triage"]


def test_review_steps_are_validated(seeded, identity):
    client = seeded.test_client()
    identity.sign_in(ADMIN_1)
    assert review(client, "triage", severity="urgent").status_code == 400
    assert review(client, "assign").status_code == 400
    assert review(client, "reopen").status_code == 400  # not closed
    assert review(client, "close", close_action="shrug").status_code == 400
    assert review(client, "explode").status_code == 400
    assert review(client, "close", close_action="no_action").status_code == 200
    assert review(client, "triage", severity="low").status_code == 400  # closed: reopen first
    assert review(client, "reopen").get_json()["review"]["status"] == "open"
    # A suggestion that was not flagged has no review.
    other = client.post(
        "/admin/api/flagged/s001/review", json={"step": "comment", "comment": "x"}, headers=csrf()
    )
    assert other.status_code == 404


def test_review_needs_the_csrf_header_and_its_history_is_append_only(seeded, identity):
    client = seeded.test_client()
    identity.sign_in(ADMIN_1)
    refused = client.post("/admin/api/flagged/s005/review", json={"step": "comment"})
    assert refused.status_code == 403
    assert review(client, "comment", comment="seen").status_code == 200
    with seeded.extensions["smartapp.db"].session() as s, pytest.raises(AppendOnlyError):
        event = s.query(FlagReviewEvent).one()
        event.comment = "rewritten"
        s.flush()


def test_the_review_page_shows_the_workflow(seeded, identity):
    client = seeded.test_client()
    identity.sign_in(ADMIN_1)
    page = client.get("/admin/flagged/s005").get_data(as_text=True)
    assert "Triage" in page and "Close with" in page and "No review steps yet." in page
    listing = client.get("/admin/flagged?status=all").get_data(as_text=True)
    assert "open" in listing and "age (days)" in listing
