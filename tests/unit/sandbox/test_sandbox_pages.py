"""Unit: the mock EHR screens — patient list, chart with the app's launch, escaping."""

from __future__ import annotations

import base64
import json
import re
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sandbox_helpers import APP_BASE, FHIR_BASE, SmartClient, bearer, query_of

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sandbox"


def iframe_src(page: str) -> str:
    match = re.search(r'<iframe[^>]*\bsrc="([^"]+)"', page)
    assert match, "no iframe in the chart"
    return unescape(match.group(1))


def test_patient_list_shows_every_patient_with_problems(client):
    page = client.get("/").get_data(as_text=True)
    for patient_id in ("pt-01", "pt-02", "pt-03", "bench-large"):
        assert f'href="/patients/{patient_id}"' in page
    assert "Brennan-Okoye" in page
    assert "Chronic kidney disease" in page or "diabetes" in page


def test_chart_embeds_the_app_through_a_real_ehr_launch(client):
    response = client.get("/patients/pt-01")
    assert response.status_code == 200
    src = iframe_src(response.get_data(as_text=True))
    assert src.startswith(f"{APP_BASE}/launch?")
    params = {k: v[0] for k, v in parse_qs(urlsplit(src).query).items()}
    assert params["iss"] == FHIR_BASE

    smart = SmartClient(client)
    redirect = smart.authorize(launch=params["launch"])
    code = query_of(redirect.headers["Location"])["code"]
    token = smart.exchange(code).get_json()
    assert token["patient"] == "pt-01"
    assert token["encounter"].startswith("pt-01-enc-")


def test_chart_page_frames_only_the_app_and_its_own_authorize_page(client):
    csp = client.get("/patients/pt-01").headers["Content-Security-Policy"]
    # The sidebar navigates to this EHR's authorize endpoint and back to the app.
    assert f"frame-src 'self' {APP_BASE};" in csp


def test_user_switcher_changes_who_launches(client):
    switched = client.post(
        "/session/user", data={"user": "dr-rene-laennec", "next": "/patients/pt-02"}
    )
    assert switched.status_code == 303
    assert switched.headers["Location"].endswith("/patients/pt-02")
    page = client.get("/patients/pt-02").get_data(as_text=True)
    assert re.search(r'value="dr-rene-laennec"\s+selected', page)
    launch = parse_qs(urlsplit(iframe_src(page)).query)["launch"][0]
    smart = SmartClient(client)
    token = smart.exchange(
        query_of(smart.authorize(launch=launch).headers["Location"])["code"]
    ).get_json()
    assert token["patient"] == "pt-02"
    payload = token["id_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == "dr-rene-laennec"


def test_user_switcher_never_redirects_off_site(client):
    response = client.post(
        "/session/user", data={"user": "dr-ada-lovelace", "next": "https://evil.example/"}
    )
    assert response.headers["Location"].endswith("/")
    assert "evil" not in response.headers["Location"]


def test_chart_data_is_escaped(client):
    bundle = json.loads((FIXTURES / "script-name-patient.json").read_text(encoding="utf-8"))
    patient_id = client.post("/_sandbox/patients", json=bundle).get_json()["patient"]
    for url in ("/", f"/patients/{patient_id}"):
        page = client.get(url).get_data(as_text=True)
        assert "<script>alert" not in page
        assert "<img src=x" not in page
        assert "&lt;script&gt;alert(" in page


def test_note_written_by_the_app_appears_in_the_chart(client, smart: SmartClient):
    token: dict[str, Any] = smart.token("pt-03")
    text = "Draft by smartapp: BP controlled. <b>not bold</b>"
    document = {
        "resourceType": "DocumentReference",
        "status": "current",
        "docStatus": "preliminary",
        "meta": {
            "security": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                    "code": "AIAST",
                }
            ]
        },
        "type": {
            "coding": [
                {"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}
            ]
        },
        "subject": {"reference": "Patient/pt-03"},
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "data": base64.b64encode(text.encode()).decode(),
                }
            }
        ],
    }
    created = client.post("/fhir/DocumentReference", json=document, headers=bearer(token))
    assert created.status_code == 201
    page = client.get("/patients/pt-03").get_data(as_text=True)
    assert "Draft by smartapp: BP controlled. &lt;b&gt;not bold&lt;/b&gt;" in page
    assert "AI-assisted" in page
    assert "awaiting signature" in page


def test_unknown_patient_is_a_404_page(client):
    response = client.get("/patients/nobody")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
