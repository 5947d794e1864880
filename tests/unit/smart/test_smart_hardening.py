"""Unit: the launch's hardening (issue 11): the public URL, a forged callback, the pending
rows, logout. The authorization server is faked with `responses`."""

from __future__ import annotations

import json

import pytest
from smart_fakes import ISS, authorize_params, make_settings

from smartapp import create_app
from smartapp.config import ConfigError
from smartapp.smart.views import redirect_uri

# -- finding 9: the redirect URI never comes from the Host header -------------------------


def test_production_refuses_to_start_without_a_public_url(tmp_path):
    settings = make_settings(tmp_path, SMARTAPP_PUBLIC_URL="")
    with pytest.raises(ConfigError, match="SMARTAPP_PUBLIC_URL is not set"):
        create_app(settings)


def test_a_malformed_public_url_stops_start_up(tmp_path):
    with pytest.raises(ConfigError, match="SMARTAPP_PUBLIC_URL="):
        make_settings(tmp_path, SMARTAPP_PUBLIC_URL="smartapp.hospital.org")


def test_the_sandbox_may_start_without_a_public_url(tmp_path):
    from smartapp.config import Settings

    settings = Settings.from_env(
        {
            "SMARTAPP_INSTANCE_PATH": str(tmp_path / "instance"),
            "SMARTAPP_SECRET_KEY": "test-secret-key-not-for-production",
            "SMARTAPP_DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
        },
        sandbox_issuer="http://127.0.0.1:8400/fhir",
    )
    app = create_app(settings)
    try:
        with app.test_request_context("/launch", base_url="http://127.0.0.1:8401"):
            assert redirect_uri(settings) == "http://127.0.0.1:8401/callback"
    finally:
        app.extensions["smartapp.db"].dispose()


def test_a_forged_host_header_does_not_choose_the_redirect_uri(client, ehr):
    response = client.get(
        "/launch", query_string={"iss": ISS, "launch": "l"}, headers={"Host": "evil.example"}
    )
    assert authorize_params(response)["redirect_uri"] == "http://localhost/callback"


def test_outside_the_sandbox_the_host_header_is_never_used(app):
    # Even if start-up were bypassed, the request's Host is not a fallback.
    settings = app.extensions["smartapp.settings"].model_copy(update={"public_url": None})
    with app.test_request_context("/launch", base_url="http://evil.example"):
        with pytest.raises(ConfigError):
            redirect_uri(settings)


# -- finding 11: a forged or failed callback never consumes the real pending state ---------


def test_a_callback_from_another_browser_does_not_spend_the_state(app, client, launcher):
    params = launcher.start()
    # Whoever learnt the state (a Referer, a log) calls back without the browser's cookie.
    forged = app.test_client().get(
        "/callback", query_string={"code": "attacker-code", "state": params["state"]}
    )
    assert forged.status_code == 400
    assert "another browser" in forged.get_data(as_text=True)
    assert launcher.complete(params).status_code == 302  # the real callback still works


def test_a_callback_with_a_refused_code_does_not_spend_the_state(client, launcher, ehr):
    params = launcher.start()
    # In the clinician's own browser, a code the EHR refuses (nothing is queued: 400).
    forged = client.get("/callback", query_string={"code": "forged", "state": params["state"]})
    assert forged.status_code == 502
    assert len(ehr.token_requests) == 1
    real = launcher.complete(params)
    assert real.status_code == 302 and real.headers["Location"].endswith("/")


def test_a_forged_error_callback_does_not_spend_the_state(app, client, launcher):
    params = launcher.start()
    forged = app.test_client().get(
        "/callback", query_string={"error": "access_denied", "state": params["state"]}
    )
    assert forged.status_code == 403
    assert launcher.complete(params).status_code == 302


def test_a_redeemed_state_is_still_single_use(client, launcher):
    params = launcher.start()
    assert launcher.complete(params).status_code == 302
    again = launcher.complete(params)
    assert again.status_code == 400


# -- finding 11: logout ends the session here and revokes at the EHR ----------------------

REVOKE = "http://ehr.test/auth/revoke"


def _session_rows(app):
    from sqlalchemy import select

    from smartapp.smart.models import LaunchSession

    with app.extensions["smartapp.db"].session() as s:
        return list(s.scalars(select(LaunchSession)))


def _revocations(rsps):
    from urllib.parse import parse_qs

    seen: list[dict[str, str]] = []

    def revoke(request):
        seen.append({k: v[0] for k, v in parse_qs(request.body or "").items()})
        return 200, {}, ""

    rsps.add_callback("POST", REVOKE, callback=revoke)
    return seen


def test_logout_ends_the_session_and_revokes_the_refresh_token(app, client, launcher, ehr, rsps):
    ehr.rsps.replace(
        "GET",
        f"{ISS}/.well-known/smart-configuration",
        json={**_discovery(), "revocation_endpoint": REVOKE},
    )
    seen = _revocations(rsps)
    launcher.launch()
    [row] = _session_rows(app)
    response = client.post("/logout", headers={"X-CSRF-Token": row.csrf_token})
    assert response.status_code == 200
    assert response.get_json() == {"status": "signed_out", "revoked": True}
    assert "no-store" in response.headers["Cache-Control"]
    assert seen == [
        {"token": "rt-ehr-launch-0001", "token_type_hint": "refresh_token", "client_id": "smartapp"}
    ]
    assert _session_rows(app) == []
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if "smartapp_session=" in h)
    assert "Max-Age=0" in cookie
    # The browser's old cookie names nothing any more.
    assert client.get("/api/context").status_code == 401


def test_logout_without_a_revocation_endpoint_still_ends_the_session(app, client, launcher):
    launcher.launch()
    [row] = _session_rows(app)
    response = client.post("/logout", headers={"X-CSRF-Token": row.csrf_token})
    assert response.get_json() == {"status": "signed_out", "revoked": False}
    assert _session_rows(app) == []


def test_logout_needs_the_sessions_csrf_token(app, client, launcher):
    launcher.launch()
    assert client.post("/logout").status_code == 403
    assert client.post("/logout", headers={"X-CSRF-Token": "guess"}).status_code == 403
    assert len(_session_rows(app)) == 1


def test_logout_drops_the_launchs_chart_copy(app, client, launcher):
    from smartapp.fhir.cache import SnapshotCache
    from tests.unit.notes.views_support import fixture_snapshot

    launcher.launch()
    [row] = _session_rows(app)
    cache = SnapshotCache(app.extensions["smartapp.db"], ttl_seconds=600)
    cache.put(row.id, fixture_snapshot())
    client.post("/logout", headers={"X-CSRF-Token": row.csrf_token})
    assert SnapshotCache(app.extensions["smartapp.db"], ttl_seconds=600).get(row.id) is None


def _discovery():
    from smart_fakes import load_fixture

    return load_fixture("smart-configuration.json")


# -- finding 6, at the authorization server: discovery and the token endpoint ---------------


def _trickling(body: bytes):
    from tests.unit.slow_http import SlowServer

    return SlowServer(mode="trickle_body", body=body, interval=0.1, content_type="application/json")


def test_discovery_from_a_trickling_server_is_cut_off_at_the_deadline():
    from smartapp.errors import TemporaryUpstreamError
    from smartapp.httplimits import limited_session
    from smartapp.smart.discovery import discover
    from tests.unit.slow_http import slow_server

    server = _trickling(json.dumps(_discovery()).encode())
    with slow_server(server) as base, limited_session(deadline=0.5) as http:
        with pytest.raises(TemporaryUpstreamError):
            discover(f"{base}/fhir", http=http, timeout=(5.0, 20.0))
        assert server.cut_off.wait(5)
        assert not server.finished.is_set()


def test_a_huge_smart_configuration_is_refused():
    from smartapp.errors import TemporaryUpstreamError
    from smartapp.httplimits import limited_session
    from smartapp.smart.discovery import discover
    from tests.unit.slow_http import SlowServer, slow_server

    server = SlowServer(mode="flood", body=b" " * (1 << 20), repeat=4)
    with slow_server(server) as base, limited_session(deadline=10, max_bytes=1 << 20) as http:
        with pytest.raises(TemporaryUpstreamError):
            discover(f"{base}/fhir", http=http, timeout=(5.0, 20.0))


def test_a_token_endpoint_trickling_its_answer_is_cut_off_at_the_deadline():
    from smartapp.errors import TemporaryUpstreamError
    from smartapp.smart.client import ClientAuthentication, SMARTClient
    from tests.unit.slow_http import slow_server

    token = {"access_token": "at", "token_type": "Bearer", "expires_in": 300, "scope": "launch"}
    server = _trickling(json.dumps(token).encode())
    client = SMARTClient(auth=ClientAuthentication(client_id="smartapp"), deadline=0.5)
    with slow_server(server) as base:
        with pytest.raises(TemporaryUpstreamError):
            client.exchange_code(
                f"{base}/auth/token",
                code="c",
                redirect_uri="http://localhost/callback",
                code_verifier="v" * 43,
                requested_scope="launch",
            )
        assert server.cut_off.wait(5)
        assert not server.finished.is_set()


@pytest.mark.parametrize("launch", ["abc\x00def", "line\nbreak"])
def test_a_launch_parameter_with_control_characters_is_refused(client, ehr, launch):
    response = client.get("/launch", query_string={"iss": ISS, "launch": launch})
    assert response.status_code == 400
    assert "launch parameter" in response.get_data(as_text=True)
