"""Unit: the synthetic population — size, R4 validity, determinism, realistic variety."""

from __future__ import annotations

from collections import Counter
from functools import cache
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from smartapp.sandbox.population import BENCH_PATIENT_ID, generate_population


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
