"""Unit (Flask test client): model cards with HTI-1 source attributes, as JSON and FHIR."""

from __future__ import annotations

from fhir.resources.R4B.bundle import Bundle

from smartapp.governance.model_cards import engine_attributes
from smartapp.suggestions.builtin import BUILTIN_INFO
from tests.unit.admin.conftest import ADMIN_1, bearer, csrf

#: The 13 evidence-based attributes that describe inputs, source and use (HTI-1).
EVIDENCE_BASED = {
    "developer",
    "funding",
    "bibliographic_citation",
    "release_date",
    "revision_schedule",
    "uses_race",
    "uses_ethnicity",
    "uses_language",
    "uses_sexual_orientation",
    "uses_gender_identity",
    "uses_sex",
    "uses_date_of_birth",
    "uses_social_determinants",
    "uses_health_status",
}


def test_the_attributes_file_covers_both_engine_families():
    attributes = engine_attributes()
    assert EVIDENCE_BASED <= set(attributes["builtin-rules"])
    llm = attributes["llm"]
    for group in (
        "output",
        "intended_use",
        "intended_patient_population",
        "cautions",
        "training_data",
        "fairness_approach",
        "external_validation",
        "performance_measures",
        "ongoing_maintenance",
        "update_schedule",
    ):
        assert llm[group], group


def test_model_cards_list_the_shipped_rules_and_each_registered_version(api, identity):
    cards = api.get("/admin/api/model-cards", headers=bearer()).get_json()["cards"]
    [rules] = cards
    assert rules["engine"] == "builtin-rules" and rules["version"] == BUILTIN_INFO.version
    assert rules["status"] == "shipped"
    assert rules["source_attributes"]["validation_on_local_data"]["status"].startswith("not yet")

    identity.sign_in(ADMIN_1)
    proposed = api.post(
        "/admin/api/engines",
        headers=csrf(),
        json={"engine": "llm", "version": "2.0", "model": "m-2", "kinds": "problem_summary"},
    )
    assert proposed.status_code == 201
    identity.sign_out()
    cards = api.get("/admin/api/model-cards", headers=bearer()).get_json()["cards"]
    llm = next(c for c in cards if c["engine"] == "llm")
    assert llm["status"] == "proposed" and llm["version"] == "2.0"
    assert llm["source_attributes"]["model"] == "m-2"
    assert llm["source_attributes"]["type"] == "predictive"
    assert llm["source_attributes"]["kinds"] == ["problem_summary"]


def test_model_cards_export_as_valid_fhir_devices(api):
    response = api.get("/admin/api/model-cards?format=fhir", headers=bearer())
    assert response.mimetype == "application/fhir+json"
    bundle = Bundle.model_validate(response.get_json())
    [entry] = bundle.entry
    device = entry.resource
    assert device.get_resource_type() == "Device"
    names = {p.type.text for p in device.property}
    assert "intended_use" in names and "uses_race" in names


def test_model_cards_need_admin_credentials(api):
    assert api.get("/admin/api/model-cards").status_code == 401
