"""Unit: the pure readers over FHIR JSON (codes, dates, values, medications, names)."""

from __future__ import annotations

from datetime import date

import pytest

from smartapp.fhir.parsing import build_snapshot
from smartapp.fhir.readers import (
    codeable_text,
    codings,
    components_of,
    effective_date,
    has_code,
    is_active_condition,
    medication_name,
    medication_of,
    parse_fhir_date,
    patient_name,
    quantity_of,
    value_text,
)

from .fakes import BASE, chart_fixtures, fixture


@pytest.fixture
def snapshot():
    return build_snapshot(chart_fixtures(), patient_id="pat-1")


def test_codeable_text_prefers_text_then_display_then_code():
    assert codeable_text(fixture("condition-diabetes.json")["code"]) == "Type 2 diabetes"
    assert codeable_text(fixture("condition-minimal.json")["code"]) == "Hypertensive disorder"
    assert codeable_text({"coding": [{"system": "x", "code": "123"}]}) == "123"
    assert codeable_text({"text": "  "}) is None
    assert codeable_text(None) is None
    assert codeable_text("not a concept") is None


def test_codings_skips_junk():
    assert codings({"coding": [{"code": "a"}, "junk", None]}) == [{"code": "a"}]
    assert codings({"coding": "junk"}) == []
    assert codings(None) == []


def test_has_code_on_resources_and_concepts():
    bp = fixture("observation-bp.json")
    assert has_code(bp, "http://loinc.org", "85354-9")
    assert has_code(bp["code"], None, "85354-9")
    assert not has_code(bp, "http://snomed.info/sct", "85354-9")
    assert not has_code(bp, "http://loinc.org", "8480-6")  # a component's code, not the panel's
    assert not has_code(None, None, "x")


@pytest.mark.parametrize(
    "name,expected",
    [
        ("observation-bp.json", date(2026, 11, 3)),  # effectiveDateTime, +01:00 kept as written
        ("observation-hba1c.json", date(2026, 10, 28)),  # effectivePeriod.start before issued
        ("observation-culture.json", date(2026, 9, 14)),  # issued
        ("condition-diabetes.json", date(2014, 6, 2)),  # onsetDateTime before recordedDate
        ("condition-resolved.json", date(2019, 1, 1)),  # onsetPeriod.start, a partial date
        ("allergyintolerance.json", date(2010, 3, 1)),  # recordedDate
        ("medicationrequest-relative.json", date(2026, 8, 1)),  # authoredOn
        ("immunization.json", date(2025, 10, 2)),  # occurrenceDateTime
        ("procedure.json", date(2024, 5, 20)),  # performedPeriod.start
        ("documentreference-with-data.json", date(2026, 10, 28)),  # date
        ("encounter.json", date(2026, 11, 3)),  # period.start
        ("observation-minimal.json", None),
        ("condition-minimal.json", None),
    ],
)
def test_effective_date(name, expected):
    assert effective_date(fixture(name)) == expected


def test_parse_fhir_date_forms():
    assert parse_fhir_date("2019") == date(2019, 1, 1)
    assert parse_fhir_date("2019-04") == date(2019, 4, 1)
    assert parse_fhir_date("2019-04-30T23:30:00-10:00") == date(2019, 4, 30)
    assert parse_fhir_date("2019-02-30") is None
    assert parse_fhir_date("yesterday") is None
    assert parse_fhir_date(20190101) is None


def test_quantity_of():
    assert quantity_of(fixture("observation-hba1c.json")) == (7.2, "%")
    assert quantity_of({"valueQuantity": {"value": 5, "code": "mg/dL"}}) == (5, "mg/dL")
    assert quantity_of({"valueQuantity": {"value": 5}}) == (5, None)
    assert quantity_of({"valueQuantity": {"value": True}}) is None
    assert quantity_of(fixture("observation-culture.json")) is None
    assert quantity_of(fixture("observation-bp.json")) is None


def test_components_of_blood_pressure():
    assert components_of(fixture("observation-bp.json")) == [
        ("8480-6", 142, "mmHg"),
        ("8462-4", 91, "mmHg"),
    ]
    absent = {
        "component": [
            {"code": {"coding": [{"code": "8480-6"}]}, "dataAbsentReason": {"text": "refused"}},
            {"code": {"text": "no code"}, "valueQuantity": {"value": 1}},
        ]
    }
    assert components_of(absent) == []
    assert components_of(fixture("observation-hba1c.json")) == []


def test_value_text():
    assert value_text(fixture("observation-hba1c.json")) == "7.2 %"
    assert value_text(fixture("observation-bp.json")) == "142/91 mmHg"
    assert value_text(fixture("observation-culture.json")) == "Escherichia coli"
    assert (
        value_text({"valueQuantity": {"value": 5, "comparator": "<", "unit": "mg/L"}}) == "<5 mg/L"
    )
    assert value_text({"valueBoolean": False}) == "no"
    assert value_text(fixture("observation-minimal.json")) is None


def test_medication_of_resolves_every_reference_form(snapshot):
    mr = {r["id"]: r for r in snapshot.of_type("MedicationRequest")}
    assert medication_of(mr["mr-contained"], snapshot)["id"] == "med-c"
    assert medication_of(mr["mr-relative"], snapshot)["id"] == "med-rel"
    assert medication_of(mr["mr-absolute"], snapshot)["id"] == "med-abs"
    assert medication_of(mr["mr-included"], snapshot)["id"] == "med-inc"
    assert medication_of(mr["mr-cc"], snapshot) is None
    missing = {**mr["mr-relative"], "medicationReference": {"reference": "Medication/gone"}}
    assert medication_of(missing, snapshot) is None
    not_a_med = {**mr["mr-relative"], "medicationReference": {"reference": "Patient/pat-1"}}
    assert medication_of(not_a_med, snapshot) is None
    assert snapshot.get(f"{BASE}/Medication/med-abs/_history/3")["id"] == "med-abs"


def test_medication_name(snapshot):
    mr = {r["id"]: r for r in snapshot.of_type("MedicationRequest")}
    assert medication_name(mr["mr-cc"]) == "Metformin ER 500 mg"
    assert medication_name(mr["mr-contained"], snapshot) == "amlodipine 5 MG Oral Tablet"
    assert medication_name(mr["mr-relative"], snapshot) == "atorvastatin 10 MG Oral Tablet"
    # Not resolvable: the reference's display is the best there is.
    assert medication_name(mr["mr-included"]) == "Lisinopril 10 mg tablet"
    assert medication_name(mr["mr-relative"]) is None


def test_patient_name():
    assert patient_name(fixture("patient.json")) == "Anna Maria Example"
    assert patient_name({"name": [{"text": "Dr. B. Jones"}]}) == "Dr. B. Jones"
    old = {"use": "official", "family": "Old", "period": {"end": "2001-01-01"}}
    assert patient_name({"name": [old, {"use": "usual", "given": ["Kim"], "family": "New"}]}) == (
        "Kim New"
    )
    assert patient_name({"resourceType": "Patient", "id": "x"}) == ""
    assert patient_name({"name": "junk"}) == ""


def test_is_active_condition():
    assert is_active_condition(fixture("condition-diabetes.json"))
    assert not is_active_condition(fixture("condition-resolved.json"))
    assert is_active_condition(fixture("condition-minimal.json"))  # no status, not abated
    refuted = {
        **fixture("condition-diabetes.json"),
        "verificationStatus": {"coding": [{"code": "refuted"}]},
    }
    assert not is_active_condition(refuted)
    relapse = {"clinicalStatus": {"coding": [{"code": "relapse"}]}}
    assert is_active_condition(relapse)
    assert not is_active_condition({"abatementDateTime": "2020-01-01"})


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("Essential hypertension (disorder)", "Essential hypertension"),
        ("Peanut - dietary (substance)", "Peanut - dietary"),
        ("Body mass index 30+ - obesity (finding)", "Body mass index 30+ - obesity"),
        ("Medication review due (situation)", "Medication review due"),
        # Not a semantic tag: the words stay.
        ("Diabetes (type 2)", "Diabetes (type 2)"),
        ("Anaemia (disorder) of pregnancy", "Anaemia (disorder) of pregnancy"),
    ],
)
def test_a_snomed_semantic_tag_is_left_off_the_name_shown(name: str, shown: str):
    assert codeable_text({"text": name}) == shown
    assert codeable_text({"coding": [{"display": name}]}) == shown
