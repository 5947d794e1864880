"""Unit (Flask test client, real store): bad JSON from the browser is a 4xx JSON error, never a
500 — deep nesting, huge numbers, NaN, lone surrogates, bodies too large (finding 7)."""

from __future__ import annotations

import pytest

from smartapp.fhir.cache import SnapshotCache

from .views_support import fixture_snapshot, launch


@pytest.fixture
def sidebar(app, client):
    """A launched sidebar with drafted suggestions: (client, csrf headers, a suggestion id)."""
    context = launch(app, client)
    SnapshotCache(app.extensions["smartapp.db"], ttl_seconds=600).put(
        context.session_id, fixture_snapshot()
    )
    first = client.get("/api/suggestions").get_json()["suggestions"][0]
    return client, {"X-CSRF-Token": context.csrf_token}, first["id"]


def _post(client, headers, path, data: bytes):
    return client.post(path, data=data, headers={**headers, "Content-Type": "application/json"})


BAD_BODIES = {
    "deeply nested": b'{"action": "accept", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "nested past the limit": b'{"action": "accept", "x": ' + b"[" * 40 + b"]" * 40 + b"}",
    "a huge integer in actions": b'{"action": "accept", "actions": 1' + b"0" * 40 + b"}",
    "a 5000-digit integer": b'{"action": "accept", "actions": ' + b"9" * 5000 + b"}",
    "infinity": b'{"action": "accept", "actions": 1e400}',
    "NaN": b'{"action": "accept", "actions": NaN}',
    "a lone surrogate": b'{"action": "edit", "text": "fine \\ud800 text"}',
    "a lone surrogate in a key": b'{"action": "accept", "\\udfff": 1}',
    "not UTF-8": b'{"action": "edit", "text": "\xff\xfe"}',
    "not JSON": b'{"action": ',
    "not an object": b'["accept"]',
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_feedback_bodies_are_a_400_json_error(sidebar, body):
    client, headers, suggestion = sidebar
    response = _post(client, headers, f"/api/suggestions/{suggestion}/feedback", body)
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] in ("invalid_json", "bad_request")
    assert "\ud800" not in error["message"] and "9999" not in error["message"]


def test_the_refusal_says_what_was_wrong(sidebar):
    client, headers, suggestion = sidebar
    deep = _post(
        client, headers, f"/api/suggestions/{suggestion}/feedback", BAD_BODIES["deeply nested"]
    )
    assert "nested more than 32 levels" in deep.get_json()["error"]["message"]
    surrogate = _post(
        client, headers, f"/api/suggestions/{suggestion}/feedback", BAD_BODIES["a lone surrogate"]
    )
    assert "lone UTF-16 surrogate" in surrogate.get_json()["error"]["message"]


def test_an_actions_count_out_of_range_is_refused(sidebar):
    client, headers, suggestion = sidebar
    response = client.post(
        f"/api/suggestions/{suggestion}/feedback",
        json={"action": "accept", "actions": 9_000_000_000_000},
        headers=headers,
    )
    assert response.status_code == 400
    assert "actions must be a whole number" in response.get_json()["error"]["message"]
    ok = client.post(
        f"/api/suggestions/{suggestion}/feedback",
        json={"action": "accept", "actions": 3},
        headers=headers,
    )
    assert ok.status_code == 200


def test_a_body_over_the_size_limit_is_a_413_json_error(sidebar):
    client, headers, suggestion = sidebar
    big = b'{"action": "edit", "text": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    response = _post(client, headers, f"/api/suggestions/{suggestion}/feedback", big)
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "body_too_large"


@pytest.mark.parametrize("body", [BAD_BODIES["deeply nested"], BAD_BODIES["a lone surrogate"]])
def test_the_note_and_the_pulse_refuse_bad_bodies_too(sidebar, body):
    client, headers, _ = sidebar
    for path in ("/api/note", "/api/pulse"):
        response = _post(client, headers, path, body)
        assert response.status_code == 400, (path, response.get_data(as_text=True))


# -- finding 11: no PHI page or API answer may be cached ------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/api/context", "/api/suggestions", "/api/notes", "/api/resources/Patient/pat-1"]
)
def test_phi_pages_and_api_answers_are_never_cached(sidebar, path):
    client, headers, _ = sidebar
    response = client.get(path, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "no-store" in response.headers["Cache-Control"]


def test_errors_and_admin_pages_are_not_cached_either(client):
    for path in ("/", "/api/context", "/admin", "/callback", "/no-such-page"):
        assert "no-store" in client.get(path).headers["Cache-Control"], path


def test_static_files_stay_cacheable(client):
    response = client.get("/static/js/sidebar.js")
    assert response.status_code == 200
    assert "no-store" not in response.headers.get("Cache-Control", "")
    response.close()


def test_a_nul_character_is_refused_before_it_reaches_the_store(sidebar):
    # Valid JSON, but PostgreSQL's text columns cannot hold it: a 500 there.
    client, headers, suggestion = sidebar
    body = b'{"action": "edit", "text": "before\\u0000after"}'
    response = _post(client, headers, f"/api/suggestions/{suggestion}/feedback", body)
    assert response.status_code == 400
    assert "NUL character" in response.get_json()["error"]["message"]
