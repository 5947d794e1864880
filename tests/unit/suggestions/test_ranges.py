"""Unit: the cited default reference range table, and care gaps that never call an
out-of-range result "up to date"."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from smartapp.fhir.parsing import build_snapshot
from smartapp.suggestions.builtin import BuiltinEngine
from smartapp.suggestions.facts import quantity
from smartapp.suggestions.grounding import GroundingVerifier
from smartapp.suggestions.ranges import default_range_check, default_ranges


def _obs(code: str, value: float, unit: str, **extra):
    return {
        "resourceType": "Observation",
        "id": f"o-{code}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": "Patient/r1"},
        "effectiveDateTime": "2026-09-01",
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
        **extra,
    }


def test_every_default_range_loads_with_a_citation_and_a_ucum_unit():
    ranges = default_ranges()
    assert {r.valueset for r in ranges} >= {
        "ldl", "hba1c", "potassium", "sodium", "creatinine", "hemoglobin", "egfr", "tsh",
    }  # fmt: skip
    assert all(r.cite.source and r.cite.url for r in ranges)


@pytest.mark.parametrize(
    ("code", "value", "unit", "sex", "direction"),
    [
        ("18262-6", 236, "mg/dL", "male", "above"),
        ("4548-4", 8.7, "%", "female", "above"),
        ("59261-8", 72, "mmol/mol", "female", "above"),
        ("2823-3", 5.9, "mmol/L", "male", "above"),
        ("2160-0", 1.2, "mg/dL", "female", "above"),
        ("2160-0", 1.2, "mg/dL", "male", None),  # sex-specific
        ("718-7", 11.0, "g/dL", "female", "below"),
        ("98979-8", 42, "mL/min/{1.73_m2}", "male", "below"),
        ("18262-6", 236, "mmol/L", "male", None),  # a range in other units says nothing
    ],
)
def test_default_range_check(code, value, unit, sex, direction):
    obs = _obs(code, value, unit)
    found = default_range_check(obs, quantity(obs["valueQuantity"]), sex=sex)
    assert (found[0].direction if found else None) == direction


def _care_text(*resources) -> list[str]:
    patient = {"resourceType": "Patient", "id": "r1", "gender": "male", "birthDate": "1971-08-19"}
    snapshot = build_snapshot(
        [patient, *resources], patient_id="r1", fetched_at=datetime(2026, 11, 15, tzinfo=UTC)
    )
    verifier = GroundingVerifier(snapshot)
    texts = []
    for suggestion in BuiltinEngine().suggest(snapshot, "care_gaps", {}):
        for statement in suggestion.statements:
            assert verifier.check(statement).ok, statement.text
            texts.append(statement.text)
    return texts


def test_ldl_236_without_a_range_is_never_up_to_date():
    texts = _care_text(_obs("18262-6", 236, "mg/dL"))
    [lipid] = [t for t in texts if t.startswith("Cholesterol")]
    assert "up to date" not in lipid
    assert "above the default reference range" in lipid and "236" in lipid


def test_the_labs_own_range_wins_over_the_default():
    normal_by_lab = _obs(
        "18262-6",
        120,
        "mg/dL",
        referenceRange=[{"high": {"value": 130, "unit": "mg/dL"}}],
    )
    [lipid] = [t for t in _care_text(normal_by_lab) if t.startswith("Cholesterol")]
    assert "up to date" in lipid
