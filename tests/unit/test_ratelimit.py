"""Unit (Flask test client; Redis on loopback where SMARTAPP_TEST_REDIS_URL is set): rate
limits on the launch, the callback and admin authentication, and the cap on pending
sign-ins (finding 10). The authorization server is faked with `responses`."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import responses
from sqlalchemy import func, select

from smartapp import create_app
from smartapp.db import utcnow
from smartapp.smart import flow
from smartapp.smart.models import PendingAuthorization
from tests.conftest import SANDBOX_ISS, make_settings
from tests.unit.smart.smart_fakes import load_fixture

TOKEN = "admin-token-for-the-rate-limit-test"


@pytest.fixture
def ehr() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(
            f"{SANDBOX_ISS}/.well-known/smart-configuration",
            json=load_fixture("smart-configuration.json"),
        )
        yield rsps


@pytest.fixture
def make_app(tmp_path):
    made = []

    def build(**env: str):
        env = {
            "SMARTAPP_SIGNIN_RATE_LIMIT": "3 per minute",
            "SMARTAPP_ADMIN_AUTH_RATE_LIMIT": "3 per minute",
            "SMARTAPP_ADMIN_TOKEN": TOKEN,
            **env,
        }
        app = create_app(make_settings(tmp_path / str(len(made)), **env))
        db = app.extensions["smartapp.db"]
        if not made:  # a fresh store (PostgreSQL is shared between tests); later apps share it
            db.drop_all()
        db.upgrade()
        made.append(app)
        return app

    yield build
    for app in made:
        app.extensions["smartapp.db"].dispose()


def _launch(client, address: str = "192.0.2.1", **headers: str):
    return client.get(
        "/launch",
        query_string={"iss": SANDBOX_ISS, "launch": "l"},
        environ_base={"REMOTE_ADDR": address},
        headers=headers,
    )


def _pending(app) -> int:
    with app.extensions["smartapp.db"].session() as s:
        return int(s.scalar(select(func.count()).select_from(PendingAuthorization)) or 0)


def test_launches_past_the_limit_are_refused_with_429(make_app, ehr):
    app = make_app()
    client = app.test_client()
    assert [_launch(client).status_code for _ in range(3)] == [302, 302, 302]
    refused = _launch(client)
    assert refused.status_code == 429
    assert "Too many requests from this address" in refused.get_data(as_text=True)
    assert refused.headers["Retry-After"]
    assert _pending(app) == 3  # the refused launch stored nothing
    # Another address has its own allowance.
    assert _launch(client, "192.0.2.2").status_code == 302


def test_callbacks_past_the_limit_are_refused(make_app, ehr):
    client = make_app().test_client()
    statuses = [
        client.get(
            "/callback",
            query_string={"state": "forged", "code": "x"},
            environ_base={"REMOTE_ADDR": "192.0.2.9"},
        ).status_code
        for _ in range(4)
    ]
    assert statuses == [400, 400, 400, 429]


def test_wrong_admin_tokens_lock_the_address_out_but_right_ones_never_count(make_app):
    client = make_app().test_client()

    def metrics(token: str, address: str):
        return client.get(
            "/admin/api/metrics",
            headers={"Authorization": f"Bearer {token}"},
            environ_base={"REMOTE_ADDR": address},
        )

    # An admin script at work: many requests, none refused.
    assert {metrics(TOKEN, "198.51.100.1").status_code for _ in range(6)} == {200}
    guesses = [metrics(f"guess-{i}", "198.51.100.2").status_code for i in range(3)]
    assert guesses == [401, 401, 401]
    locked = metrics(TOKEN, "198.51.100.2")  # even the right token, from that address
    assert locked.status_code == 429
    assert locked.get_json()["error"]["code"] == "too_many_requests"
    assert metrics(TOKEN, "198.51.100.1").status_code == 200


def test_behind_a_proxy_the_forwarded_client_is_counted(make_app, ehr):
    client = make_app(SMARTAPP_PROXY_HOPS="1").test_client()
    # Every request comes from the proxy; X-Forwarded-For names the clinician's machine.
    for _ in range(3):
        assert _launch(client, "10.0.0.1", **{"X-Forwarded-For": "203.0.113.7"}).status_code == 302
    assert _launch(client, "10.0.0.1", **{"X-Forwarded-For": "203.0.113.7"}).status_code == 429
    # A client cannot dodge the limit by adding its own X-Forwarded-For entries.
    spoofed = {"X-Forwarded-For": "1.2.3.4, 203.0.113.7"}
    assert _launch(client, "10.0.0.1", **spoofed).status_code == 429
    assert _launch(client, "10.0.0.1", **{"X-Forwarded-For": "203.0.113.8"}).status_code == 302


def test_a_bad_rate_limit_setting_stops_start_up(tmp_path):
    from smartapp.config import ConfigError

    with pytest.raises(ConfigError, match="SMARTAPP_SIGNIN_RATE_LIMIT"):
        make_settings(tmp_path, SMARTAPP_SIGNIN_RATE_LIMIT="lots")
    with pytest.raises(ConfigError, match="SMARTAPP_REDIS_URL"):
        make_settings(tmp_path, SMARTAPP_REDIS_URL="http://127.0.0.1:6379")


def _redis_url() -> str:
    url = os.environ.get("SMARTAPP_TEST_REDIS_URL")
    if not url:
        pytest.skip("SMARTAPP_TEST_REDIS_URL is not set")
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at SMARTAPP_TEST_REDIS_URL ({url})")
    return url


def test_with_redis_every_process_shares_the_limits(make_app, ehr):
    url = _redis_url()
    first = make_app(SMARTAPP_REDIS_URL=url).test_client()
    second = make_app(SMARTAPP_REDIS_URL=url).test_client()
    address = f"test-{uuid.uuid4()}"  # fresh counters, whatever an earlier run left
    assert _launch(first, address).status_code == 302
    assert _launch(second, address).status_code == 302
    assert _launch(first, address).status_code == 302
    assert _launch(second, address).status_code == 429


# -- pending sign-ins: capped and expired ----------------------------------------------------


def test_one_browser_keeps_only_its_newest_pending_sign_ins(make_app, ehr):
    app = make_app(SMARTAPP_SIGNIN_RATE_LIMIT="100 per minute")
    client = app.test_client()  # keeps its binding cookie, as a browser does
    for _ in range(flow.MAX_PENDING_PER_BROWSER + 5):
        assert _launch(client).status_code == 302
    assert _pending(app) == flow.MAX_PENDING_PER_BROWSER


def test_past_the_cap_launches_wait(make_app, ehr, monkeypatch):
    monkeypatch.setattr(flow, "MAX_PENDING", 3)
    app = make_app(SMARTAPP_SIGNIN_RATE_LIMIT="100 per minute")
    # Three anonymous clients (no cookie kept) fill the store to the cap.
    for i in range(3):
        assert _launch(app.test_client(), f"192.0.2.{10 + i}").status_code == 302
    refused = _launch(app.test_client(), "192.0.2.20")
    assert refused.status_code == 503
    assert "Too many sign-ins are under way" in refused.get_data(as_text=True)
    assert _pending(app) == 3


def test_expired_pending_sign_ins_are_purged(make_app, ehr):
    from datetime import timedelta

    from smartapp.smart.services import get_services

    app = make_app()

    def expire_all() -> None:
        with app.extensions["smartapp.db"].session() as s:
            for row in s.scalars(select(PendingAuthorization)):
                row.expires_at = utcnow() - timedelta(seconds=1)

    _launch(app.test_client(), "192.0.2.30")
    expire_all()
    assert flow.purge_expired(get_services(app)) == 1
    assert _pending(app) == 0
    # The background worker's housekeeping beat does it too, without any new launch.
    _launch(app.test_client(), "192.0.2.31")
    expire_all()
    for task in app.extensions["smartapp.housekeeping"]:
        task()
    assert _pending(app) == 0
