"""Unit: a launch's tokens held for its pending notes outlive the launch session.

The next launch in the same browser deletes the session; the copy held for the notes it
saved stays, kept in step with the session's refreshes (a rotated refresh token spends the
old one), refreshed on its own once the session is gone, and dropped at logout.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from smart_fakes import ISS
from sqlalchemy import select, update

from smartapp.db import utcnow
from smartapp.errors import RelaunchRequired
from smartapp.smart.models import HeldGrant, LaunchSession
from smartapp.smart.services import get_services
from smartapp.smart.session import (
    HOLD_LIFETIME,
    HeldTokenProvider,
    SessionTokenProvider,
    held_grant_usable,
    hold_grant,
)


def _sessions(app):
    with app.extensions["smartapp.db"].session() as s:
        return list(s.scalars(select(LaunchSession).order_by(LaunchSession.created_at)))


def _held(app, session_id):
    with app.extensions["smartapp.db"].session() as s:
        return s.get(HeldGrant, session_id)


def _refreshed(access, refresh=None):
    body = {"access_token": access, "token_type": "Bearer", "expires_in": 3600}
    if refresh:
        body["refresh_token"] = refresh
    return body


@pytest.fixture
def held_id(app, launcher):
    """A launch whose tokens are held (as saving a note does), then replaced by the next
    launch in the same browser, which deletes its session."""
    launcher.launch()
    [first] = _sessions(app)
    assert hold_grant(get_services(app), first.id)
    launcher.launch()
    assert [s.id for s in _sessions(app)] != [first.id]
    assert first.id not in [s.id for s in _sessions(app)]
    return first.id


def test_held_tokens_outlive_the_replaced_launch(app, held_id):
    services = get_services(app)
    assert held_grant_usable(services, held_id, iss=ISS)
    assert HeldTokenProvider(services, held_id).access_token() == "at-ehr-launch-0001"
    held = _held(app, held_id)
    assert "at-ehr-launch-0001" not in (held.access_token_enc or "")  # encrypted at rest
    assert held.absolute_expires_at > utcnow() + HOLD_LIFETIME - timedelta(minutes=1)


def test_held_tokens_refresh_on_their_own_and_keep_the_rotated_token(app, held_id, ehr):
    provider = HeldTokenProvider(get_services(app), held_id)
    ehr.queue_token(_refreshed("at-2", "rt-2"))
    ehr.queue_token(_refreshed("at-3", "rt-3"))
    assert provider.refresh() == "at-2"
    assert provider.refresh() == "at-3"
    used = [r["form"]["refresh_token"] for r in ehr.token_requests[2:]]
    assert used == ["rt-ehr-launch-0001", "rt-2"]


def test_a_session_refresh_keeps_its_held_copy_in_step(app, launcher, ehr):
    launcher.launch()
    [row] = _sessions(app)
    services = get_services(app)
    hold_grant(services, row.id)
    ehr.queue_token(_refreshed("at-2", "rt-2"))
    assert SessionTokenProvider(services, row.id).refresh() == "at-2"
    # The session ends; its copy carries the rotated refresh token, not the spent one.
    with app.extensions["smartapp.db"].session() as s:
        s.delete(s.get(LaunchSession, row.id))
    ehr.queue_token(_refreshed("at-3", "rt-3"))
    assert HeldTokenProvider(services, row.id).refresh() == "at-3"
    assert ehr.token_requests[-1]["form"]["refresh_token"] == "rt-2"


def test_a_refused_session_refresh_leaves_no_usable_copy(app, launcher, ehr):
    launcher.launch()
    [row] = _sessions(app)
    services = get_services(app)
    hold_grant(services, row.id)
    ehr.queue_token({"error": "invalid_grant"}, status=400)
    with pytest.raises(RelaunchRequired):
        SessionTokenProvider(services, row.id).refresh()
    assert _held(app, row.id).refresh_token_enc is None
    assert not held_grant_usable(services, row.id, iss=ISS)


def test_held_tokens_expire(app, held_id):
    with app.extensions["smartapp.db"].session() as s:
        s.execute(
            update(HeldGrant)
            .where(HeldGrant.id == held_id)
            .values(absolute_expires_at=utcnow() - timedelta(seconds=1))
        )
    services = get_services(app)
    assert not held_grant_usable(services, held_id, iss=ISS)
    with pytest.raises(RelaunchRequired):
        HeldTokenProvider(services, held_id).access_token()


def test_held_tokens_are_only_for_their_issuer(app, held_id):
    assert not held_grant_usable(get_services(app), held_id, iss="https://other.example/fhir")


def test_logout_drops_the_held_copy(app, client, launcher):
    launcher.launch()
    [row] = _sessions(app)
    hold_grant(get_services(app), row.id)
    assert client.post("/logout", headers={"X-CSRF-Token": row.csrf_token}).status_code == 200
    assert _held(app, row.id) is None


def test_an_ended_launch_has_nothing_to_hold(app, launcher):
    launcher.launch()
    [row] = _sessions(app)
    with app.extensions["smartapp.db"].session() as s:
        s.get(LaunchSession, row.id).access_token_enc = None
    assert not hold_grant(get_services(app), row.id)
    assert _held(app, row.id) is None
