"""Unit (Flask test client): `GET /api/resources/<type>/<id>`, a cited source in place.

The summary comes from the launch's cached chart snapshot only: anything the snapshot does
not hold is a 404 JSON error, and nothing is ever fetched from the EHR for it.
"""

from __future__ import annotations

import json

import pytest
import responses

from smartapp.notes.presenting import summarize, summary_for
from tests.unit.fhir.fakes import fixture

from .views_support import fixture_snapshot, launch, use_chart


@pytest.fixture
def chart(app):
    return use_chart(app, fixture_snapshot())


@pytest.fixture
def no_http():
    """Any outbound HTTP request fails the test: the endpoint must answer from the cache."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock
    assert not mock.calls


def test_observation_summary_has_value_unit_date_code_and_status(app, client, chart, no_http):
    launch(app, client)
    response = client.get("/api/resources/Observation/obs-a1c")
    assert response.status_code == 200
    summary = response.get_json()["resource"]
    assert summary["reference"] == "Observation/obs-a1c"
    assert summary["title"] == "HbA1c"
    assert (summary["value"], summary["unit"], summary["valueText"]) == (7.2, "%", "7.2 %")
    assert summary["date"] == "2026-10-28"
    assert summary["status"] == "final"
    assert summary["codes"] == [
        {
            "system": "http://loinc.org",
            "code": "4548-4",
            "display": "Hemoglobin A1c/Hemoglobin.total in Blood",
        }
    ]
    assert {"label": "Category", "value": "Laboratory"} in summary["details"]
    # Read from the cached snapshot, never re-read from the EHR.
    assert chart.calls == [False]


def test_blood_pressure_lists_its_components(app, client, chart, no_http):
    launch(app, client)
    summary = client.get("/api/resources/Observation/obs-bp").get_json()["resource"]
    assert summary["valueText"].startswith("142/")
    names = [c["name"] for c in summary["components"]]
    assert names == ["Systolic blood pressure", "Diastolic blood pressure"]
    assert summary["components"][0]["value"] == 142
    assert summary["components"][0]["unit"] == "mmHg"


def test_condition_status_joins_clinical_and_verification(app, client, chart, no_http):
    launch(app, client)
    summary = client.get("/api/resources/Condition/cond-dm").get_json()["resource"]
    raw = fixture("condition-diabetes.json")
    clinical = raw["clinicalStatus"]["coding"][0]["code"]
    assert summary["status"].split(", ")[0] == clinical
    assert summary["title"] == "Type 2 diabetes"
    assert all(code["code"] for code in summary["codes"])


def test_medication_request_names_its_contained_medication(app, client, chart, no_http):
    launch(app, client)
    summary = client.get("/api/resources/MedicationRequest/mr-contained").get_json()["resource"]
    assert summary["title"]
    assert summary["codes"], "the contained Medication's code is shown"


def test_document_summary_never_carries_the_note_content(app, client, chart, no_http):
    launch(app, client)
    response = client.get("/api/resources/DocumentReference/doc-1")
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "UGF0aWVudCBBbm5h" not in body  # the attachment's data
    assert response.get_json()["resource"]["title"] == "Progress note"


@pytest.mark.parametrize(
    "path",
    [
        "/api/resources/Observation/not-in-the-chart",
        "/api/resources/Condition/obs-a1c",  # the id exists, but as another type
        "/api/resources/observation/obs-a1c",  # not a resource type
        "/api/resources/Observation/obs%20a1c",  # not a FHIR id
        "/api/resources/Medication/med-c",  # contained in a MedicationRequest: not on its own
    ],
)
def test_anything_outside_the_snapshot_is_a_404_json_error(app, client, chart, no_http, path):
    launch(app, client)
    response = client.get(path)
    assert response.status_code == 404
    error = response.get_json()["error"]
    assert error["code"] == "not_found"
    assert "not in the chart" in error["message"]


def test_without_a_launch_it_is_401_and_reads_nothing(client, chart, no_http):
    response = client.get("/api/resources/Observation/obs-a1c")
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "not_authenticated"
    assert chart.calls == []


def test_a_summary_is_plain_json_text_even_for_markup_in_the_chart():
    """Chart text is passed through as data (the sidebar sets it with textContent)."""
    from smartapp.fhir.parsing import build_snapshot

    hostile = {
        "resourceType": "Observation",
        "id": "x1",
        "status": "final",
        "code": {"text": "<img src=x onerror=alert(1)>"},
        "subject": {"reference": "Patient/p"},
        "valueString": "<script>alert(2)</script>",
    }
    patient = {"resourceType": "Patient", "id": "p"}
    snapshot = build_snapshot([patient, hostile], patient_id="p")
    summary = summary_for(snapshot, "Observation", "x1")
    assert summary is not None
    assert summary["title"] == "<img src=x onerror=alert(1)>"
    assert summary["valueText"] == "<script>alert(2)</script>"
    json.dumps(summary)  # JSON-safe


def test_long_chart_text_is_cut_for_a_glance():
    resource = {
        "resourceType": "Procedure",
        "id": "p1",
        "status": "completed",
        "code": {"text": "x" * 1000},
    }
    from smartapp.fhir.snapshot import ChartSnapshot

    summary = summarize(resource, ChartSnapshot(patient={"resourceType": "Patient", "id": "p"}))
    assert len(summary["title"]) == 300
    assert summary["title"].endswith("…")
