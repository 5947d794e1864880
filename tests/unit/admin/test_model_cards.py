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


def test_a_version_keeps_the_attributes_it_was_registered_with(
    api, identity, tmp_path, monkeypatch
):
    """Editing source_attributes.toml describes later versions; an older one's card keeps the
    words it went through change control with (and its own evaluation and last update)."""
    import smartapp.governance.attributes as attributes

    copy = tmp_path / "source_attributes.toml"
    original = attributes.ATTRIBUTES_FILE.read_text()
    copy.write_text(original)
    monkeypatch.setattr(attributes, "ATTRIBUTES_FILE", copy)
    attributes.engine_attributes.cache_clear()
    before = attributes.engine_attributes()["llm"]["cautions"]

    identity.sign_in(ADMIN_1)

    def propose(version: str) -> None:
        answer = api.post(
            "/admin/api/engines",
            headers=csrf(),
            json={"engine": "llm", "version": version, "model": "m", "kinds": "problem_summary"},
        )
        assert answer.status_code == 201, answer.get_json()

    propose("1.0")
    edited = original.replace(before, "Revised cautions after the 2027 review.")
    assert edited != original
    copy.write_text(edited)
    attributes.engine_attributes.cache_clear()
    propose("2.0")
    identity.sign_out()

    cards = api.get("/admin/api/model-cards", headers=bearer()).get_json()["cards"]
    by_version = {c["version"]: c for c in cards if c["engine"] == "llm"}
    assert by_version["1.0"]["source_attributes"]["cautions"] == before
    assert (
        by_version["2.0"]["source_attributes"]["cautions"]
        == "Revised cautions after the 2027 review."
    )
    for card in by_version.values():
        assert card["source_attributes_from"] == "registration"
        assert card["source_attributes"]["last_update"]
        assert card["source_attributes"]["validation_on_local_data"]["status"].startswith("not yet")
    # The shipped rules are in no registry row: they are described by the file as it is.
    [rules] = [c for c in cards if c["status"] == "shipped"]
    assert rules["source_attributes_from"] == "file"
    attributes.engine_attributes.cache_clear()


def test_a_card_shows_the_validation_of_its_own_stored_evaluation(admin_app):
    from smartapp.db import utcnow
    from smartapp.governance.model_cards import model_cards
    from smartapp.governance.models import EngineVersion

    db = admin_app.extensions["smartapp.db"]
    run = {
        "sha256": "ab" * 32,
        "kinds": [{"kind": "problem_summary", "patients": 40, "grounding_rate": 0.97}],
    }
    with db.session() as s:
        for version, evaluation in (("1", run), ("2", None)):
            s.add(
                EngineVersion(
                    engine_name="llm",
                    version=version,
                    model="m",
                    kinds=["problem_summary"],
                    state="evaluated" if evaluation else "proposed",
                    proposed_by="test",
                    proposed_at=utcnow(),
                    evaluated_at=utcnow() if evaluation else None,
                    evaluation=evaluation,
                    source_attributes={"type": "predictive", "cautions": f"as of {version}"},
                )
            )
        s.flush()
        cards = {c["version"]: c for c in model_cards(s) if c["engine"] == "llm"}
    one, two = cards["1"]["source_attributes"], cards["2"]["source_attributes"]
    assert one["cautions"] == "as of 1" and two["cautions"] == "as of 2"
    assert one["validation_on_local_data"]["kinds"][0]["grounding_rate"] == 0.97
    assert one["validation_on_local_data"]["sha256"] == "ab" * 32
    assert two["validation_on_local_data"] == {"status": "not yet evaluated on local data"}
