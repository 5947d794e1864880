"""Unit: tolerant R4B parsing (parse_resources, build_snapshot) over the fixture resources."""

from __future__ import annotations

import logging

from smartapp.fhir.parsing import build_snapshot, parse_resources, validation_error

from .fakes import chart_fixtures, fixture

INVALID = (
    "invalid/observation-text-value.json",
    "invalid/condition-no-subject.json",
    "invalid/medicationrequest-unknown-field.json",
)
PHI = ("Anna", "Example", "gout", "555-0100", "warfarin", "glucose")


def fifty_entry_bundle() -> dict:
    """A searchset of 50 entries: 47 valid copies of the fixtures (new ids) and 3 invalid ones."""
    valid = [r for r in chart_fixtures() if r["resourceType"] != "Patient"]
    entries = []
    for i in range(47):
        resource = dict(valid[i % len(valid)])
        resource["id"] = f"{resource['id']}-{i}"
        entries.append({"resource": resource, "search": {"mode": "match"}})
    for position, name in zip((5, 20, 40), INVALID, strict=True):
        entries.insert(position, {"resource": fixture(name), "search": {"mode": "match"}})
    return {"resourceType": "Bundle", "type": "searchset", "total": 50, "entry": entries}


def test_fifty_entry_bundle_with_three_invalid_parses_47_and_reports_3(caplog):
    bundle = fifty_entry_bundle()
    assert len(bundle["entry"]) == 50
    caplog.set_level(logging.DEBUG)

    valid, problems = parse_resources(e["resource"] for e in bundle["entry"])

    assert len(valid) == 47
    assert sum(p.count for p in problems) == 3
    assert {p.resource_type for p in problems} == {"Observation", "Condition", "MedicationRequest"}
    assert all(p.code == "invalid_resource" for p in problems)
    said = " ".join(p.detail for p in problems) + caplog.text
    for word in PHI:
        assert word not in said


def test_reasons_name_fields_not_values():
    assert validation_error(fixture("invalid/observation-text-value.json")) == (
        "invalid valueQuantity.value"
    )
    assert validation_error(fixture("invalid/medicationrequest-unknown-field.json")) == (
        "invalid prescriberNote"
    )
    assert validation_error({"resourceType": "NotAThing"}) == "unknown resourceType 'NotAThing'"
    assert validation_error(["not", "a", "resource"]) == "not a JSON object"
    assert validation_error({"id": "x"}) == "no resourceType"


def test_every_chart_fixture_is_valid_r4():
    # Missing optional fields, contained resources, absolute references, valueQuantity,
    # valueCodeableConcept, components and both medication[x] forms all pass.
    for resource in chart_fixtures():
        assert validation_error(resource) is None, resource["id"]


def test_build_snapshot_groups_by_type_and_drops_duplicates():
    resources = chart_fixtures()
    resources.append(dict(fixture("condition-diabetes.json")))  # a second page repeated it
    snapshot = build_snapshot(resources, patient_id="pat-1", encounter_id="enc-1")
    assert snapshot.patient["id"] == "pat-1"
    assert snapshot.encounter is not None
    assert len(snapshot.of_type("Condition")) == 3
    assert snapshot.problems == ()
    assert "Patient" not in snapshot.resources and "Encounter" not in snapshot.resources


def test_build_snapshot_keeps_the_servers_json():
    snapshot = build_snapshot(chart_fixtures(), patient_id="pat-1")
    assert snapshot.get("Observation/obs-a1c") == fixture("observation-hba1c.json")


def test_missing_patient_is_a_problem_with_a_placeholder():
    snapshot = build_snapshot([fixture("condition-minimal.json")], patient_id="pat-1")
    assert snapshot.patient == {"resourceType": "Patient", "id": "pat-1"}
    assert [p.code for p in snapshot.problems] == ["search_failed"]
    not_granted = build_snapshot([], patient_id="pat-1", not_granted=("Patient",))
    assert [p.code for p in not_granted.problems] == ["scope_not_granted"]


def _nested_extension_observation(levels: int) -> dict:
    extension: dict = {"url": "http://example.org/leaf", "valueString": "x"}
    for _ in range(levels):
        extension = {"url": "http://example.org/nest", "extension": [extension]}
    return {
        "resourceType": "Observation",
        "id": "deep",
        "status": "final",
        "code": {"text": "deep"},
        "subject": {"reference": "Patient/p1"},
        "extension": [extension],
    }


def test_extension_nested_200_levels_is_skipped_not_a_crash():
    error = validation_error(_nested_extension_observation(200))
    assert error is not None and "nested" in error


def test_shallow_nested_extension_still_validates():
    assert validation_error(_nested_extension_observation(3)) is None


# -- hostile input: each bad resource is skipped and reported, never a crash ---------------


def _creatinine(**changes) -> dict:
    resource = {
        "resourceType": "Observation",
        "id": "cr",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]},
        "subject": {"reference": "Patient/pat-1"},
        "effectiveDateTime": "2026-11-02",
        "valueQuantity": {"value": 1.1, "unit": "mg/dL"},
    }
    resource.update(changes)
    return resource


HOSTILE = {
    "309-digit integer": (
        _creatinine(valueQuantity={"value": 10**308, "unit": "mg/dL"}),
        "a number beyond 18 digits",
    ),
    "309-digit decimal read as a float": (
        _creatinine(valueQuantity={"value": 1e308, "unit": "mg/dL"}),
        "a number beyond 18 digits",
    ),
    "infinity": (
        _creatinine(valueQuantity={"value": float("inf"), "unit": "mg/dL"}),
        "not finite",
    ),
    "impossible date": (_creatinine(effectiveDateTime="2026-13-45"), "invalid effectiveDateTime"),
    "a word for a date": (_creatinine(effectiveDateTime="yesterday"), "invalid effectiveDateTime"),
    "year zero": (_creatinine(effectiveDateTime="0000-01-01"), "invalid effectiveDateTime"),
    "a 2 MB string": (
        _creatinine(code={"text": "x" * (2 * 1024 * 1024)}),
        "a string longer than",
    ),
    "a lone surrogate in text": (
        _creatinine(code={"text": "creatinine \ud800"}),
        "not valid Unicode",
    ),
    "a lone surrogate in a key": (
        _creatinine(**{"note\udfff": "x"}),
        "not valid Unicode",
    ),
}


def test_each_hostile_input_has_a_reason_that_quotes_nothing():
    for name, (resource, reason) in HOSTILE.items():
        error = validation_error(resource)
        assert error is not None and reason in error, name
        assert "x" * 20 not in error and "\ud800" not in error, name


def test_hostile_resources_are_skipped_and_reported_and_the_rest_is_kept():
    resources = [*chart_fixtures(), *(r for r, _ in HOSTILE.values())]
    for i, resource in enumerate(resources[-len(HOSTILE) :]):
        resource["id"] = f"hostile-{i}"
    snapshot = build_snapshot(resources, patient_id="pat-1")

    assert not any(r["id"].startswith("hostile-") for r in snapshot.of_type("Observation"))
    assert len(snapshot.of_type("Observation")) == 4  # the fixtures' own
    [problem] = snapshot.problems
    assert (problem.code, problem.resource_type, problem.count) == (
        "invalid_resource",
        "Observation",
        len(HOSTILE),
    )
    # The problem's text can be written anywhere (log, store, sidebar).
    problem.detail.encode("utf-8")


def test_a_large_attachment_is_not_a_hostile_string():
    document = fixture("documentreference-with-data.json")
    document["content"][0]["attachment"]["data"] = "QUJD" * (400 * 1024)  # 1.6 MB base64
    assert validation_error(document) is None


def test_plausible_large_numbers_still_validate():
    # A viral load in copies/mL, a cell count per litre: large but real.
    assert (
        validation_error(_creatinine(valueQuantity={"value": 12_000_000, "unit": "{copies}/mL"}))
        is None
    )
    assert validation_error(_creatinine(valueQuantity={"value": 5.1e12, "unit": "/L"})) is None


def test_unknown_modifier_extensions_anywhere_skip_the_resource_and_say_so():
    top = _creatinine(
        id="mod-top",
        modifierExtension=[{"url": "http://example.org/not-really", "valueBoolean": True}],
    )
    nested = fixture("medicationrequest-codeableconcept.json")
    nested["id"] = "mod-nested"
    nested["dosageInstruction"] = [
        {
            "text": "twice daily",
            "modifierExtension": [{"url": "http://example.org/only-if", "valueString": "asked"}],
        }
    ]
    plain = _creatinine(
        id="plain", extension=[{"url": "http://example.org/x", "valueBoolean": True}]
    )
    snapshot = build_snapshot([fixture("patient.json"), top, nested, plain], patient_id="pat-1")

    assert [r["id"] for r in snapshot.of_type("Observation")] == ["plain"]
    assert snapshot.of_type("MedicationRequest") == ()
    by_type = {p.resource_type: p for p in snapshot.problems}
    assert set(by_type) == {"Observation", "MedicationRequest"}
    assert {p.code for p in snapshot.problems} == {"unsupported_modifier"}
    assert "http://example.org/only-if" in by_type["MedicationRequest"].detail
    assert "twice daily" not in by_type["MedicationRequest"].detail
