"""Unit: the per-window token of a sidebar whose browser blocks the app's cookies.

The callback from an EHR frame with no binding cookie hands the launch over in the page;
the token then names that launch only through the X-Window-Token header, with the same
CSRF and lifetime rules as the cookie. The authorization server is faked (`responses`).
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from flask import jsonify
from smart_fakes import make_settings
from sqlalchemy import select, update

from smartapp import create_app
from smartapp.db import utcnow
from smartapp.logging_setup import scrub
from smartapp.smart.models import LaunchSession
from smartapp.smart.session import current_launch
from tests.conftest import close_app

FRAME = {"Sec-Fetch-Dest": "iframe"}
WINDOW_META = re.compile(r'<meta name="window-token" content="([^"]+)">')
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


@pytest.fixture
def app(app):
    @app.get("/api/test-context")
    def _context():
        return jsonify({"patient": current_launch().patient_id})

    @app.post("/api/test-write")
    def _write():
        return jsonify({"patient": current_launch().patient_id})

    return app


class Window:
    """One browser window that sends the app no cookie: what it holds is the page's."""

    def __init__(self, app, response):
        self.client = app.test_client(use_cookies=False)
        self.response = response
        page = response.get_data(as_text=True)
        token, csrf = WINDOW_META.search(page), CSRF_META.search(page)
        self.token = token.group(1) if token else None
        self.csrf = csrf.group(1) if csrf else None

    def get(self, path, **headers):
        return self.client.get(path, headers={"X-Window-Token": self.token, **headers})

    def post(self, path, **headers):
        return self.client.post(
            path, headers={"X-Window-Token": self.token, "X-CSRF-Token": self.csrf, **headers}
        )


def frame_callback(app, launcher, ehr, *, patient="pat-123", headers=FRAME, binding=None):
    """/launch in the EHR's frame, then the callback as a browser that keeps no cookie."""
    params = launcher.start()
    body = ehr.token_response(patient=patient)
    body["id_token"] = ehr.id_token(nonce=params["nonce"])
    ehr.queue_token(body)
    frame = app.test_client(use_cookies=False)
    sent = dict(headers)
    if binding is not None:
        sent["Cookie"] = f"smartapp_auth={binding}"
    response = frame.get(
        "/callback", query_string={"code": "code-xyz", "state": params["state"]}, headers=sent
    )
    return Window(app, response)


def _sessions(app):
    with app.extensions["smartapp.db"].session() as s:
        return list(s.scalars(select(LaunchSession)))


def test_a_frame_without_cookies_gets_its_launch_in_the_page(app, launcher, ehr):
    window = frame_callback(app, launcher, ehr)
    response = window.response
    assert response.status_code == 200
    assert window.token and len(window.token) >= 43
    # Handed over in the page only: no cookie, no redirect, no URL, never cached.
    assert not [h for h in response.headers.getlist("Set-Cookie") if "smartapp_session" in h]
    assert "Location" not in response.headers
    assert "no-store" in response.headers["Cache-Control"]
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert all(window.token not in value for _, value in response.headers.items())
    assert '<meta name="landing" content="/">' in response.get_data(as_text=True)

    assert window.get("/api/test-context").get_json() == {"patient": "pat-123"}
    assert window.client.get("/api/test-context").status_code == 401
    # The token is bound to that launch: the stored row is not named by the token itself.
    [row] = _sessions(app)
    assert row.patient == "pat-123"
    assert window.token not in row.id


def test_the_window_token_is_taken_from_the_header_only(app, launcher, ehr):
    window = frame_callback(app, launcher, ehr)
    anon = window.client
    for name in ("X-Window-Token", "window_token", "token", "session"):
        assert anon.get("/api/test-context", query_string={name: window.token}).status_code == 401
    # Nor as the session cookie: a window token and a cookie value never name the same row.
    assert (
        anon.get(
            "/api/test-context", headers={"Cookie": f"smartapp_session={window.token}"}
        ).status_code
        == 401
    )


def test_a_window_writes_only_with_its_csrf_token(app, launcher, ehr):
    window = frame_callback(app, launcher, ehr)
    assert window.post("/api/test-write", **{"X-CSRF-Token": "guess"}).status_code == 403
    no_csrf = window.client.post("/api/test-write", headers={"X-Window-Token": window.token})
    assert no_csrf.status_code == 403
    assert window.post("/api/test-write").get_json() == {"patient": "pat-123"}


def test_the_window_token_ends_with_its_session(app, launcher, ehr):
    window = frame_callback(app, launcher, ehr)
    db = app.extensions["smartapp.db"]
    with db.session() as s:
        s.execute(update(LaunchSession).values(last_seen_at=utcnow() - timedelta(hours=2)))
    assert window.get("/api/test-context").status_code == 401
    assert _sessions(app) == []  # and the expired row goes with its tokens

    window = frame_callback(app, launcher, ehr)
    with db.session() as s:
        s.execute(update(LaunchSession).values(absolute_expires_at=utcnow()))
    assert window.get("/api/test-context").status_code == 401


def test_two_windows_keep_their_own_patients(app, launcher, ehr):
    first = frame_callback(app, launcher, ehr, patient="pat-first")
    second = frame_callback(app, launcher, ehr, patient="pat-second")
    assert first.token != second.token
    # The second launch replaced nothing: both windows go on, each with its own chart.
    assert first.get("/api/test-context").get_json() == {"patient": "pat-first"}
    assert second.get("/api/test-context").get_json() == {"patient": "pat-second"}
    assert first.post("/api/test-write").get_json() == {"patient": "pat-first"}
    # One window's CSRF token does not carry another's writes.
    crossed = first.post("/api/test-write", **{"X-CSRF-Token": second.csrf})
    assert crossed.status_code == 403
    assert "belongs to an earlier launch" in crossed.get_json()["error"]["message"]


def test_a_window_header_never_falls_back_to_the_browsers_cookie(app, client, launcher, ehr):
    """A tab with a cookie launch (another patient) must not answer for a window's token."""
    launcher.launch(token=ehr.token_response(patient="pat-cookie"))
    assert client.get("/api/test-context").get_json() == {"patient": "pat-cookie"}
    for token in ("", "not-a-live-token"):
        response = client.get("/api/test-context", headers={"X-Window-Token": token})
        assert response.status_code == 401


def test_a_window_signs_out_alone(app, launcher, ehr):
    first = frame_callback(app, launcher, ehr, patient="pat-first")
    second = frame_callback(app, launcher, ehr, patient="pat-second")
    assert first.client.post("/logout", headers={"X-Window-Token": first.token}).status_code == 403
    response = first.post("/logout")
    assert response.status_code == 200
    assert response.get_json()["status"] == "signed_out"
    assert not [h for h in response.headers.getlist("Set-Cookie") if "smartapp_session" in h]
    assert first.get("/api/test-context").status_code == 401
    assert second.get("/api/test-context").get_json() == {"patient": "pat-second"}


def test_a_callback_without_cookies_outside_a_frame_is_refused(app, launcher, ehr):
    # A top-level page has first-party cookies: a missing binding there is another browser.
    window = frame_callback(app, launcher, ehr, headers={"Sec-Fetch-Dest": "document"})
    assert window.response.status_code == 400
    assert "another browser" in window.response.get_data(as_text=True)
    assert window.token is None and _sessions(app) == []


def test_a_wrong_binding_cookie_is_refused_in_a_frame_too(app, launcher, ehr):
    window = frame_callback(app, launcher, ehr, binding="x" * 43)
    assert window.response.status_code == 400
    assert window.token is None and _sessions(app) == []


def test_a_site_can_turn_window_sessions_off(tmp_path, rsps, ehr):
    from smart_fakes import LaunchActions

    app = create_app(make_settings(tmp_path, SMARTAPP_WINDOW_SESSIONS="false"))
    try:
        window = frame_callback(app, LaunchActions(app.test_client(), ehr), ehr)
        assert window.response.status_code == 400
        assert window.token is None
    finally:
        close_app(app)


def test_the_window_token_is_never_logged(app, launcher, ehr, caplog):
    caplog.set_level(logging.DEBUG)
    window = frame_callback(app, launcher, ehr)
    window.get("/api/test-context")
    window.post("/api/test-write")
    window.post("/logout")
    assert window.token and window.token not in caplog.text
    assert "a window that blocks cookies" in caplog.text
    # And a library that logs request headers is scrubbed too.
    assert window.token not in scrub(f"X-Window-Token: {window.token}")
