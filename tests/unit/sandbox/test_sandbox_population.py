"""Unit: the synthetic population — size, R4 validity, determinism, realistic variety."""

from __future__ import annotations

from collections import Counter
from functools import cache
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from smartapp.sandbox.population import BENCH_PATIENT_ID, generate_population, profile_of


@pytest.fixture(scope="module")
def population() -> list[dict[str, Any]]:
    return generate_population()


def resources(bundle: dict[str, Any], resource_type: str | None = None) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for e in bundle["entry"]
        if resource_type is None or e["resource"]["resourceType"] == resource_type
    ]


def references(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                found.append(value)
            elif key != "contained":
                found.extend(references(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(references(item))
    return found


@cache
def model(resource_type: str) -> Any:
    return get_fhir_model_class(resource_type)


def test_default_population_has_at_least_20_patients(population):
    assert len(population) >= 20
    patients = [bundle["entry"][0]["resource"] for bundle in population]
    assert all(p["resourceType"] == "Patient" for p in patients)
    assert len({p["id"] for p in patients}) == len(patients)
    assert patients[0]["id"] == "pt-01"
    assert patients[-1]["id"] == BENCH_PATIENT_ID
    names = [(p["name"][0]["given"][0], p["name"][0]["family"]) for p in patients]
    assert len(set(names)) == len(names)


def test_every_resource_is_valid_r4b_with_an_id(population):
    for bundle in population:
        assert bundle["type"] == "collection"
        for resource in resources(bundle):
            assert resource.get("id"), resource["resourceType"]
            model(resource["resourceType"]).model_validate(resource)


def test_references_are_relative_and_resolve_within_the_chart(population):
    for bundle in population:
        present = {f"{r['resourceType']}/{r['id']}" for r in resources(bundle)}
        for resource in resources(bundle):
            contained = {f"#{c['id']}" for c in resource.get("contained", [])}
            for ref in references(resource):
                if ref.startswith("#"):
                    assert ref in contained
                else:
                    assert "://" not in ref and not ref.startswith("urn:")
                    assert ref in present, (resource["id"], ref)


def test_population_is_deterministic_and_seeded():
    assert generate_population(count=3, seed=7) == generate_population(count=3, seed=7)
    assert generate_population(count=3, seed=7) != generate_population(count=3, seed=8)


def test_bench_patient_is_large(population):
    bench = next(b for b in population if b["entry"][0]["resource"]["id"] == BENCH_PATIENT_ID)
    counts = Counter(r["resourceType"] for r in resources(bench))
    assert counts["Observation"] >= 300
    assert counts["Condition"] >= 20
    assert counts["MedicationRequest"] >= 15
    dates = {o["effectiveDateTime"][:4] for o in resources(bench, "Observation")}
    assert len(dates) >= 3  # years of history, not one visit


def test_charts_are_varied(population):
    every = [r for bundle in population for r in resources(bundle)]
    counts = Counter(r["resourceType"] for r in every)
    for resource_type in (
        "Encounter",
        "Condition",
        "Observation",
        "MedicationRequest",
        "Medication",
        "AllergyIntolerance",
        "Procedure",
        "Immunization",
        "DocumentReference",
        "Practitioner",
        "DiagnosticReport",
    ):
        assert counts[resource_type] > 0, resource_type
    statuses = Counter(m["status"] for m in resources_of(every, "MedicationRequest"))
    assert statuses["active"] and (statuses["stopped"] or statuses["completed"])
    styles = Counter(medication_style(m) for m in resources_of(every, "MedicationRequest"))
    assert styles["codeable"] and styles["reference"] and styles["contained"]
    systems = {c["system"] for p in resources_of(every, "Procedure") for c in p["code"]["coding"]}
    assert {"http://snomed.info/sct", "http://www.ama-assn.org/go/cpt"} <= systems
    assert {
        c["system"] for i in resources_of(every, "Immunization") for c in i["vaccineCode"]["coding"]
    } == {"http://hl7.org/fhir/sid/cvx"}
    conditions = {c["code"]["coding"][0]["code"] for c in resources_of(every, "Condition")}
    assert {"E11.9", "I10"} & conditions and any(c.startswith("N18") for c in conditions)


def test_patients_have_lab_history(population):
    bundle = population[0]
    by_code = Counter(o["code"]["coding"][0]["code"] for o in resources(bundle, "Observation"))
    assert max(by_code.values()) >= 3
    assert len(resources(bundle, "Encounter")) >= 3


def test_clinicians_have_stable_readable_ids(population):
    practitioners = {r["id"] for b in population for r in resources(b, "Practitioner")}
    assert "dr-ada-lovelace" in practitioners


def resources_of(every: list[dict[str, Any]], resource_type: str) -> list[dict[str, Any]]:
    return [r for r in every if r["resourceType"] == resource_type]


def medication_style(request: dict[str, Any]) -> str:
    if "medicationCodeableConcept" in request:
        return "codeable"
    reference = request["medicationReference"]["reference"]
    return "contained" if reference.startswith("#") else "reference"


def test_count_must_be_positive():
    with pytest.raises(ValueError, match="count"):
        generate_population(count=0)


NO_KNOWN_ALLERGY = {"716186003", "409137002"}  # SNOMED CT: no known (drug) allergy


def patient_id(bundle: dict[str, Any]) -> str:
    return str(bundle["entry"][0]["resource"]["id"])


def test_every_chart_records_its_allergy_status(population):
    statuses: Counter[str] = Counter()
    for bundle in population:
        allergies = resources(bundle, "AllergyIntolerance")
        assert allergies, patient_id(bundle)  # an allergy, or the record that there is none
        none_known = [a for a in allergies if a["code"]["coding"][0]["code"] in NO_KNOWN_ALLERGY]
        # "No known allergy" stands alone: never next to an allergy it would contradict.
        assert not none_known or len(allergies) == 1, patient_id(bundle)
        for record in none_known:
            assert record["code"]["coding"][0]["system"] == "http://snomed.info/sct"
            assert record["clinicalStatus"]["coding"][0]["code"] == "active"
            assert record["recordedDate"] and "reaction" not in record
            statuses[record["code"]["coding"][0]["code"]] += 1
    assert set(statuses) == NO_KNOWN_ALLERGY  # both are in use


def test_every_chart_has_an_active_problem_and_treatment_where_the_profile_needs_one(
    population,
):
    for index, bundle in enumerate(population):
        active = [
            c
            for c in resources(bundle, "Condition")
            if c["clinicalStatus"]["coding"][0]["code"] == "active"
        ]
        assert active, patient_id(bundle)
        orders = [m for m in resources(bundle, "MedicationRequest") if m["status"] == "active"]
        if patient_id(bundle) != BENCH_PATIENT_ID and profile_of(index) in ("healthy", "anaemia"):
            assert orders, patient_id(bundle)
    healthy = population[4]  # pt-05, a "healthy" profile: reflux, treated
    codes = {c["code"]["coding"][0]["code"] for c in resources(healthy, "Condition")}
    assert "K21.9" in codes


def test_some_patients_had_this_seasons_flu_vaccine_at_their_last_visit(population):
    given: list[str] = []
    not_given: list[str] = []
    for bundle in population:
        last_visit = max(e["period"]["start"][:10] for e in resources(bundle, "Encounter"))
        flu = [
            i["occurrenceDateTime"]
            for i in resources(bundle, "Immunization")
            if "influenza" in i["vaccineCode"]["text"].lower()
        ]
        (given if last_visit in flu else not_given).append(patient_id(bundle))
    # Both kinds of chart exist, so care gaps show vaccines up to date and due.
    assert len(given) >= len(population) // 2 and not_given


def test_oxygen_saturation_never_exceeds_100_percent(population):
    for bundle in population:
        for obs in resources(bundle, "Observation"):
            if obs["code"]["coding"][0]["code"] in ("59408-5", "2708-6"):
                assert obs["valueQuantity"]["value"] <= 100, obs["id"]
