"""Unit: the session's TokenProvider: refresh before expiry, rotation, refusal, concurrency."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from smartapp.db import utcnow
from smartapp.errors import RelaunchRequired
from smartapp.smart.models import LaunchSession
from smartapp.smart.services import get_services
from smartapp.smart.session import SessionTokenProvider, current_launch, token_provider


@pytest.fixture
def session_id(app, launcher):
    assert launcher.launch().status_code == 302
    with app.extensions["smartapp.db"].session() as s:
        return s.scalars(select(LaunchSession.id)).one()


def _row(app, session_id):
    with app.extensions["smartapp.db"].session() as s:
        return s.get(LaunchSession, session_id)


def _expire_in(app, session_id, seconds, *, lifetime=3600):
    """As if the access token, issued `lifetime` seconds long, had `seconds` left."""
    now = utcnow()
    with app.extensions["smartapp.db"].session() as s:
        s.execute(
            update(LaunchSession)
            .where(LaunchSession.id == session_id)
            .values(
                access_expires_at=now + timedelta(seconds=seconds),
                created_at=now - timedelta(seconds=lifetime - seconds),
                last_refreshed_at=None,
            )
        )


def _short_lived_launch(app, launcher, ehr, seconds=60):
    """A launch whose EHR issues `seconds`-long access tokens (Oracle Health: ~570 s)."""
    launcher.complete(launcher.start(), token=ehr.token_response(expires_in=seconds))
    with app.extensions["smartapp.db"].session() as s:
        return s.scalars(select(LaunchSession.id)).one()


def _refresh_requests(ehr):
    return [r for r in ehr.token_requests if r["form"]["grant_type"] == "refresh_token"]


def _together(providers, call):
    """Run `call(provider)` on one thread per provider, all released at once."""
    results: list[object] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(providers))

    def run(provider):
        barrier.wait()
        try:
            results.append(call(provider))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in providers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


def _provider(app, session_id):
    return SessionTokenProvider(get_services(app), session_id)


def _refreshed(access, refresh=None, **extra):
    body = {"access_token": access, "token_type": "Bearer", "expires_in": 3600, **extra}
    if refresh:
        body["refresh_token"] = refresh
    return body


def test_fresh_token_is_used_without_a_request(app, session_id, ehr):
    assert _provider(app, session_id).access_token() == "at-ehr-launch-0001"
    assert len(ehr.token_requests) == 1  # only the launch's code exchange


def test_token_is_refreshed_shortly_before_expiry(app, session_id, ehr):
    _expire_in(app, session_id, 30)
    ehr.queue_token(_refreshed("at-2", "rt-2"))
    assert _provider(app, session_id).access_token() == "at-2"
    form = ehr.token_requests[-1]["form"]
    assert form["grant_type"] == "refresh_token"
    assert form["refresh_token"] == "rt-ehr-launch-0001"
    row = _row(app, session_id)
    assert row.access_expires_at > utcnow() + timedelta(minutes=50)
    assert "at-2" not in row.access_token_enc  # stored encrypted


def test_rotation_keeps_the_new_refresh_token(app, session_id, ehr):
    provider = _provider(app, session_id)
    ehr.queue_token(_refreshed("at-2", "rt-2"))
    ehr.queue_token(_refreshed("at-3"))  # no new refresh token this time
    ehr.queue_token(_refreshed("at-4"))
    assert provider.refresh() == "at-2"
    assert provider.refresh() == "at-3"
    assert provider.refresh() == "at-4"
    used = [r["form"]["refresh_token"] for r in ehr.token_requests[1:]]
    assert used == ["rt-ehr-launch-0001", "rt-2", "rt-2"]


def test_refresh_updates_the_granted_scope_when_the_server_says(app, session_id, ehr):
    ehr.queue_token(_refreshed("at-2", scope="launch patient/Patient.rs"))
    _provider(app, session_id).refresh()
    assert _row(app, session_id).scope == "launch patient/Patient.rs"


def test_refused_refresh_requires_relaunch_and_forgets_the_refresh_token(app, session_id, ehr):
    ehr.queue_token({"error": "invalid_grant"}, status=400)
    provider = _provider(app, session_id)
    with pytest.raises(RelaunchRequired):
        provider.refresh()
    assert _row(app, session_id).refresh_token_enc is None
    with pytest.raises(RelaunchRequired):
        provider.refresh()
    assert len(ehr.token_requests) == 2  # the second attempt sent nothing


def test_no_refresh_token_requires_relaunch(app, launcher, ehr):
    body = ehr.token_response(refresh_token=None, scope="launch openid fhirUser patient/Patient.rs")
    assert launcher.complete(launcher.start(), token=body).status_code == 302
    with app.extensions["smartapp.db"].session() as s:
        session_id = s.scalars(select(LaunchSession.id)).one()
    provider = _provider(app, session_id)
    with pytest.raises(RelaunchRequired):
        provider.refresh()
    _expire_in(app, session_id, -5)
    with pytest.raises(RelaunchRequired):
        provider.access_token()


def test_token_about_to_expire_without_refresh_token_is_still_used(app, launcher, ehr):
    body = ehr.token_response(refresh_token=None)
    launcher.complete(launcher.start(), token=body)
    with app.extensions["smartapp.db"].session() as s:
        session_id = s.scalars(select(LaunchSession.id)).one()
    _expire_in(app, session_id, 20)
    assert _provider(app, session_id).access_token() == "at-ehr-launch-0001"


def test_server_briefly_down_keeps_the_unexpired_token(app, session_id, ehr, rsps):
    _expire_in(app, session_id, 30)
    ehr.queue_token({"error": "temporarily_unavailable"}, status=503)
    assert _provider(app, session_id).access_token() == "at-ehr-launch-0001"


def test_concurrent_refreshes_spend_the_refresh_token_once(app, session_id, ehr):
    first, second = _provider(app, session_id), _provider(app, session_id)
    # Both saw the same token and both got a 401 with it.
    first.access_token()
    second.access_token()
    ehr.queue_token(_refreshed("at-2", "rt-2"))
    ehr.queue_token(_refreshed("at-3", "rt-3"))
    results: list[str] = []
    barrier = threading.Barrier(2)

    def run(provider):
        barrier.wait()
        results.append(provider.refresh())

    threads = [threading.Thread(target=run, args=(p,)) for p in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["at-2", "at-2"]
    refreshes = [r for r in ehr.token_requests if r["form"]["grant_type"] == "refresh_token"]
    assert len(refreshes) == 1


def test_short_lived_token_is_not_refreshed_on_every_request(app, launcher, ehr):
    session_id = _short_lived_launch(app, launcher, ehr, seconds=60)
    provider = _provider(app, session_id)
    for _ in range(7):  # one chart load's FHIR rounds
        assert provider.access_token() == "at-ehr-launch-0001"
    assert _refresh_requests(ehr) == []
    # A refresh that brings another 60-second token is not followed by another one.
    ehr.queue_token(_refreshed("at-2", "rt-2", expires_in=60))
    assert provider.refresh() == "at-2"
    for _ in range(7):
        assert provider.access_token() == "at-2"
    assert len(_refresh_requests(ehr)) == 1


def test_short_lived_token_is_refreshed_in_its_last_quarter(app, launcher, ehr):
    session_id = _short_lived_launch(app, launcher, ehr, seconds=60)
    _expire_in(app, session_id, 10, lifetime=60)
    ehr.queue_token(_refreshed("at-2", "rt-2", expires_in=60))
    assert _provider(app, session_id).access_token() == "at-2"
    assert len(_refresh_requests(ehr)) == 1


def test_refused_early_refresh_keeps_the_still_valid_token(app, launcher, ehr):
    session_id = _short_lived_launch(app, launcher, ehr, seconds=60)
    _expire_in(app, session_id, 10, lifetime=60)
    ehr.queue_token({"error": "invalid_grant"}, status=400)
    provider = _provider(app, session_id)
    assert provider.access_token() == "at-ehr-launch-0001"
    assert provider.access_token() == "at-ehr-launch-0001"
    assert len(_refresh_requests(ehr)) == 1  # refused once, not asked again
    _expire_in(app, session_id, -1, lifetime=60)
    with pytest.raises(RelaunchRequired):
        provider.access_token()


def test_concurrent_requests_near_expiry_refresh_once(app, launcher, ehr):
    session_id = _short_lived_launch(app, launcher, ehr, seconds=60)
    _expire_in(app, session_id, 10, lifetime=60)
    for n in range(2, 6):
        ehr.queue_token(_refreshed(f"at-{n}", f"rt-{n}", expires_in=60))
    providers = [_provider(app, session_id) for _ in range(4)]
    results, errors = _together(providers, lambda p: p.access_token())
    assert errors == []
    assert results == ["at-2"] * 4
    assert len(_refresh_requests(ehr)) == 1


def test_concurrent_requests_when_the_refresh_is_refused_keep_the_valid_token(app, launcher, ehr):
    session_id = _short_lived_launch(app, launcher, ehr, seconds=60)
    _expire_in(app, session_id, 10, lifetime=60)
    ehr.queue_token({"error": "invalid_grant"}, status=400)
    ehr.queue_token({"error": "invalid_grant"}, status=400)
    providers = [_provider(app, session_id) for _ in range(3)]
    results, errors = _together(providers, lambda p: p.access_token())
    assert errors == []
    assert results == ["at-ehr-launch-0001"] * 3
    assert len(_refresh_requests(ehr)) == 1


def test_token_provider_for_the_current_launch(app, client, session_id):
    cookie = client.get_cookie("smartapp_session")
    with app.test_request_context(headers={"Cookie": f"smartapp_session={cookie.value}"}):
        launch = current_launch()
        assert launch.session_id == session_id
        assert token_provider(launch).access_token() == "at-ehr-launch-0001"


def test_ended_session_requires_relaunch(app, session_id):
    from smartapp.smart.session import end_session

    end_session(get_services(app), session_id)
    with pytest.raises(RelaunchRequired):
        _provider(app, session_id).access_token()
