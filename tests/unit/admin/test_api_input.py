"""Unit (Flask test client): the admin API refuses bad JSON with a 400, never a 500 (finding 7)."""

from __future__ import annotations

import pytest

from tests.unit.admin.conftest import bearer

BODIES = {
    "deeply nested": b'{"site": "*", "kind": "*", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "a huge number": b'{"site": "*", "kind": "*", "percent": 1' + b"0" * 30 + b"}",
    "a lone surrogate": b'{"site": "*", "kind": "*", "reason": "\\ud83d"}',
}


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
@pytest.mark.parametrize("path", ["/admin/api/rollout", "/admin/api/kill-switches"])
def test_bad_json_to_the_admin_api_is_a_400(api, path, body):
    response = api.post(path, data=body, headers={**bearer(), "Content-Type": "application/json"})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "invalid_json"


def test_a_report_posted_as_a_string_is_parsed_with_the_same_limits(api):
    nested = "[" * 50_000 + "]" * 50_000
    response = api.post(
        "/admin/api/engines/no-such-version/evaluation",
        json={"report": nested},
        headers=bearer(),
    )
    assert response.status_code == 400
    assert "report" in response.get_json()["error"]["message"]
