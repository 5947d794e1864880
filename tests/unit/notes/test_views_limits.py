"""Unit (Flask test client, the real chart source, the EHR on `responses`): a chart whose
answer is over the size cap gives the clinician a clear error, not a 500 or a partial chart."""

from __future__ import annotations

import copy

import pytest
import responses

from smartapp import create_app
from tests.conftest import SANDBOX_ISS, make_settings
from tests.unit.fhir.fakes import FakeFHIRServer, chart_fixtures

from .views_support import launch


@pytest.fixture
def small_cap_app(tmp_path):
    app = create_app(make_settings(tmp_path, SMARTAPP_FHIR_MAX_MB="1"))
    app.config["TESTING"] = True
    db = app.extensions["smartapp.db"]
    db.drop_all()
    db.upgrade()
    yield app
    db.dispose()


def test_a_chart_over_the_size_cap_is_a_clear_error(small_cap_app):
    resources = chart_fixtures()
    observation = copy.deepcopy(next(r for r in resources if r["resourceType"] == "Observation"))
    observation["id"] = "huge-note"
    observation["text"] = {"status": "generated", "div": "<div>" + "x" * (2 << 20) + "</div>"}
    client = small_cap_app.test_client()
    launch(small_cap_app, client)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        FakeFHIRServer([*resources, observation], base=SANDBOX_ISS).add_to(rsps)
        response = client.get("/api/suggestions")
    assert response.status_code == 502
    error = response.get_json()["error"]
    assert error["code"] == "chart_too_large"
    assert error["message"].startswith("The chart is too large to read in one go")
