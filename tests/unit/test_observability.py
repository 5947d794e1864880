"""Unit (Flask test client): /metrics, the request id, /healthz and /readyz."""

from __future__ import annotations

import json
import logging

from sqlalchemy import text

from smartapp.fhir.cache import SnapshotCache
from smartapp.logging_setup import JSONFormatter, RequestIdFilter
from smartapp.observability import route_label
from tests.conftest import make_settings
from tests.unit.notes.views_support import fixture_snapshot, launch


def _metrics(client, **kwargs) -> str:
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    return response.get_data(as_text=True)


def test_metrics_scrape_shows_routes_errors_engines_and_the_outbox(app, client):
    context = launch(app, client)
    SnapshotCache(app.extensions["smartapp.db"], ttl_seconds=60).put(
        context.session_id, fixture_snapshot()
    )
    assert client.get("/api/suggestions").status_code == 200
    client.post("/api/suggestions/no-such-id/feedback", json={"action": "accept"})
    body = _metrics(client)
    assert 'smartapp_request_seconds_count{route="GET /api/suggestions",status="200"} 1.0' in body
    assert 'route="POST /api/suggestions/{id}/feedback"' in body  # ids never become labels
    assert "no-such-id" not in body
    assert "smartapp_errors_total{code=" in body
    assert 'smartapp_engine_seconds_count{engine="builtin",kind="problem_summary"}' in body
    assert "smartapp_outbox_pending_notes 0.0" in body
    assert "smartapp_outbox_oldest_pending_seconds 0.0" in body
    assert "smartapp_chart_load_seconds_count" in body


def test_metrics_are_for_loopback_or_the_admin_token(tmp_path):
    from smartapp import create_app

    app = create_app(make_settings(tmp_path, SMARTAPP_ADMIN_TOKEN="scrape-token-0123456789"))
    client = app.test_client()
    remote = {"REMOTE_ADDR": "10.1.2.3"}
    assert client.get("/metrics", environ_base=remote).status_code == 403
    # Through a proxy on this host every client is loopback: that is not enough.
    assert client.get("/metrics", headers={"X-Forwarded-For": "10.1.2.3"}).status_code == 403
    wrong = {"Authorization": "Bearer not-the-token"}
    assert client.get("/metrics", environ_base=remote, headers=wrong).status_code == 403
    good = {"Authorization": "Bearer scrape-token-0123456789"}
    _metrics(client, environ_base=remote, headers=good)
    app.extensions["smartapp.db"].dispose()


def test_a_request_id_is_kept_or_made_and_put_on_log_lines(app, client):
    assert client.get("/healthz", headers={"X-Request-ID": "lb-42.a"}).headers["X-Request-ID"] == (
        "lb-42.a"
    )
    made = client.get("/healthz", headers={"X-Request-ID": "not ok; <script>"})
    assert made.headers["X-Request-ID"] != "not ok; <script>"
    assert len(made.headers["X-Request-ID"]) == 32
    with app.test_request_context("/api/context"):
        app.preprocess_request()
        record = logging.LogRecord(
            "smartapp.x", logging.INFO, __file__, 1, "hello %s", ("a",), None
        )
        RequestIdFilter().filter(record)
        line = json.loads(JSONFormatter().format(record))
    assert line["message"] == "hello a" and line["level"] == "INFO"
    assert line["request_id"] and len(line["request_id"]) == 32


def test_route_labels():
    assert route_label("GET", "/api/resources/<resource_type>/<resource_id>") == (
        "GET /api/resources/{id}/{id}"
    )
    assert route_label("GET", "/admin/api/x/<int:n>") == "GET /admin/api/x/{id}"
    assert route_label("GET", None) == "GET unmatched"


def test_readyz_says_whether_the_schema_is_at_head(app, client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["status"] == "ready"
    engine = app.extensions["smartapp.db"].engine
    with engine.begin() as connection:
        head = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        connection.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    try:
        behind = client.get("/readyz")
        assert behind.status_code == 503
        assert "0001" in behind.get_json()["store"]
    finally:
        # On PostgreSQL the store is shared with the next test: a schema "at 0001" with
        # every table present would make its start-up migration fail.
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
