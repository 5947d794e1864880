"""Preventive rule packs (USPSTF, CDC schedules): who they apply to, what meets them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from smartapp.fhir.parsing import build_snapshot
from smartapp.siteconfig import parse_site_config, preventive_pack_ids
from smartapp.suggestions import preventive
from smartapp.suggestions.facts import ChartFacts
from smartapp.suggestions.grounding import GroundingVerifier

AS_OF = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


def patient(gender: str, birth: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p", "gender": gender, "birthDate": birth, **extra}


def imm(id_: str, cvx: str, when: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Immunization",
        "id": id_,
        "status": "completed",
        "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": cvx}]},
        "patient": {"reference": "Patient/p"},
        "occurrenceDateTime": when,
        **extra,
    }


def obs(id_: str, system: str, code: str, when: str, value: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}], "text": code},
        "subject": {"reference": "Patient/p"},
        "effectiveDateTime": when,
    }
    if isinstance(value, dict):
        out["valueCodeableConcept"] = value
    elif value is not None:
        out["valueQuantity"] = {"value": value}
    return out


def review(*resources: dict[str, Any], packs: Any = None) -> dict[str, tuple[bool, Any]]:
    snapshot = build_snapshot(list(resources), patient_id="p", fetched_at=AS_OF)
    verifier = GroundingVerifier(snapshot)
    out = {}
    for due, statement in preventive.review(ChartFacts(snapshot), packs):
        assert verifier.check(statement).ok, statement.text
        assert statement.rule  # every rule names its source and version
        out[statement.text.split(":")[0]] = (due, statement)
    return out


def test_a_woman_of_52_is_due_for_mammogram_colorectal_and_cervical_screening():
    found = review(patient("female", "1974-05-01"))
    for title in (
        "Screening mammogram",
        "Colorectal cancer screening",
        "Cervical cancer screening",
    ):
        assert found[title][0] is True
    assert "USPSTF breast cancer screening 2024-04" in found["Screening mammogram"][1].rule
    assert "Abdominal aortic aneurysm ultrasound (once)" not in found  # not a man


def test_never_a_mammogram_for_a_man_nor_colonoscopy_for_a_child_nor_anything_when_deceased():
    assert "Screening mammogram" not in review(patient("male", "1974-05-01"))
    child = review(patient("female", "2018-02-01"))
    assert "Colorectal cancer screening" not in child and "Screening mammogram" not in child
    assert review(patient("female", "1950-01-01", deceasedBoolean=True)) == {}


def test_doses_in_a_series_are_counted():
    found = review(patient("male", "1970-01-01"), imm("z1", "187", "2026-03-01"))
    due, statement = found["Recombinant zoster vaccine series"]
    assert due
    assert statement.text == (
        "Recombinant zoster vaccine series: due, one of two doses on file (last dose on 2026-03-01)"
    )
    found = review(
        patient("male", "1970-01-01"),
        imm("z1", "187", "2026-03-01"),
        imm("z2", "187", "2026-06-01"),
    )
    due, statement = found["Recombinant zoster vaccine series"]
    assert not due and "two doses" in statement.text
    assert [c.reference for c in statement.citations] == ["Immunization/z2", "Immunization/z1"]


def test_a_child_series_follows_the_schedule_by_age():
    # 20 months old: DTaP doses 1-4 due; three on file.
    found = review(
        patient("female", "2025-03-10"),
        imm("d1", "20", "2025-05-10"),
        imm("d2", "20", "2025-07-10"),
        imm("d3", "20", "2025-09-10"),
    )
    due, statement = found["DTaP series"]
    assert due and "three of four doses on file" in statement.text
    assert found["MMR series"][0] is True


def test_lung_and_aaa_screening_need_the_smoking_history():
    snomed, loinc = "http://snomed.info/sct", "http://loinc.org"
    nonsmoker = review(patient("male", "1956-01-01"))
    assert "Lung cancer screening (low-dose CT)" not in nonsmoker
    assert "Abdominal aortic aneurysm ultrasound (once)" not in nonsmoker
    ex_smoker = {"coding": [{"system": snomed, "code": "8517006"}]}
    smoker = review(
        patient("male", "1956-01-01"),
        obs("py", snomed, "401201003", "2026-01-01", 30),
        obs("ss", loinc, "72166-2", "2026-01-01", ex_smoker),
    )
    assert smoker["Lung cancer screening (low-dose CT)"][0] is True
    assert smoker["Abdominal aortic aneurysm ultrasound (once)"][0] is True


def test_a_screening_on_file_is_up_to_date_and_cites_it():
    found = review(
        patient("female", "1974-05-01"),
        obs("fit", "http://loinc.org", "29771-3", "2026-04-01", None),
    )
    due, statement = found["Colorectal cancer screening"]
    assert not due and [c.reference for c in statement.citations] == ["Observation/fit"]


def test_a_site_turns_packs_off():
    assert set(preventive_pack_ids()) >= {"uspstf", "cdc-adult-immunization"}
    config = parse_site_config('[care_gaps]\npacks = ["uspstf"]\n')
    assert config.for_issuer(None).care_gaps.packs == ("uspstf",)
    found = review(patient("male", "1970-01-01"), packs=("uspstf",))
    assert "Recombinant zoster vaccine series" not in found
    assert "Colorectal cancer screening" in found
