"""Unit: the grounding verifier's unit-aware matching of numbers, dates and drug names."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from smartapp.fhir.parsing import build_snapshot
from smartapp.suggestions.builtin import BUILTIN_INFO
from smartapp.suggestions.grounding import GroundingVerifier, canonical_unit, verify_suggestions
from smartapp.suggestions.interfaces import Citation, Statement, Suggestion

UCUM = "http://unitsofmeasure.org"


def _obs(rid: str, code: str, value: float, unit: str, ucum: str, when: str, **extra):
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": ucum},
        **extra,
    }


RESOURCES = [
    {
        "resourceType": "Patient",
        "id": "p1",
        "gender": "female",
        "birthDate": "1961-06-03",
        "name": [{"family": "Private", "given": ["Name"]}],
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": "12345"}],
        "telecom": [{"system": "phone", "value": "555 0100"}],
    },
    {
        "resourceType": "Condition",
        "id": "dm",
        "code": {
            "coding": [
                {
                    "system": "http://hl7.org/fhir/sid/icd-10-cm",
                    "code": "E11.9",
                    "display": "Type 2 diabetes mellitus without complications",
                }
            ]
        },
        "subject": {"reference": "Patient/p1"},
        "onsetDateTime": "2019-04-01",
    },
    _obs(
        "a1c",
        "4548-4",
        7.2,
        "%",
        "%",
        "2025-11-02T09:30:00Z",
        referenceRange=[{"low": {"value": 4.0, "unit": "%"}, "high": {"value": 5.6, "unit": "%"}}],
    ),  # fmt: skip
    _obs("egfr", "98979-8", 45, "mL/min/{1.73_m2}", "mL/min/{1.73_m2}", "2025-11-02"),
    _obs("plt", "777-3", 250, "10*3/uL", "10*3/uL", "2025-11-02"),
    _obs("temp", "8310-5", 36.5, "Cel", "Cel", "2025-11-02"),
    {
        "resourceType": "Observation",
        "id": "bp",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2025-10-01",
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {"value": 148, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
            },
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                "valueQuantity": {"value": 92, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
            },
        ],
    },
    {
        "resourceType": "MedicationRequest",
        "id": "metformin",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "861007",
                    "display": "metformin hydrochloride 500 MG Oral Tablet",
                }
            ]
        },
        "dosageInstruction": [{"text": "1 tablet twice daily"}],
    },
    {
        "resourceType": "Medication",
        "id": "atorva",
        "code": {"text": "atorvastatin 40 MG Oral Tablet [Lipitor]"},
    },
    {
        "resourceType": "MedicationRequest",
        "id": "statin",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationReference": {"reference": "Medication/atorva"},
    },
]

SNAPSHOT = build_snapshot(
    RESOURCES, patient_id="p1", fetched_at=datetime(2025, 12, 1, 12, 0, tzinfo=UTC)
)
VERIFIER = GroundingVerifier(SNAPSHOT)


def statement(text: str, *refs: str) -> Statement:
    return Statement(text=text, citations=tuple(Citation(reference=r, display=r) for r in refs))


A1C = "Observation/a1c"

CASES = [
    # (text, citations, passes)
    ("HbA1c 7.2% on 2025-11-02", [A1C], True),
    ("HbA1c 7.2 % on 2 Nov 2025", [A1C], True),
    ("HbA1c 7.20% in Nov 2025", [A1C], True),
    ("HbA1c 7.2 percent (November 2, 2025)", [A1C], True),
    ("HbA1c 7.2% on 11/02/2025", [A1C], True),
    ("HbA1c 7.2% on 2025-11-02 at 09:30", [A1C], True),
    ("HbA1c 7.2% (reference 4.0-5.6 %)", [A1C], True),
    ("1. HbA1c (LOINC 4548-4) was 7.2%", [A1C], True),
    ("HbA1c 7.2 mmol/L", [A1C], False),  # the wrong unit
    ("HbA1c 7.3%", [A1C], False),  # an invented value
    ("HbA1c 7.2% on 2025-11-03", [A1C], False),  # the wrong day
    ("HbA1c 7.2% in Dec 2025", [A1C], False),
    ("HbA1c 7.2% at 10:45", [A1C], False),
    ("Checked in 2025", [A1C], True),
    ("Checked in 2019", [A1C], False),
    ("eGFR 45 mL/min/1.73 m2", ["Observation/egfr"], True),
    ("eGFR 45 mL/min/1.73m²", ["Observation/egfr"], True),
    ("eGFR 45 mg/dL", ["Observation/egfr"], False),
    ("Platelets 250 x10^3/uL", ["Observation/plt"], True),
    ("Temperature 36.5 °C", ["Observation/temp"], True),
    ("Blood pressure 148/92 mmHg on 2025-10-01", ["Observation/bp"], True),
    ("Blood pressure 148 / 92 mm[Hg]", ["Observation/bp"], True),
    ("Blood pressure 148/93 mmHg", ["Observation/bp"], False),
    # The dose instructions are free text: the chart's words, quoted, not the app's finding.
    ("Metformin 500 mg, 1 tablet twice daily", ["MedicationRequest/metformin"], False),
    (
        'Metformin 500 mg: the order\'s instructions say "1 tablet twice daily"',
        ["MedicationRequest/metformin"],
        True,
    ),
    ('Metformin: the order says "2 tablets twice daily"', ["MedicationRequest/metformin"], False),
    ("METFORMIN hydrochloride 500 MG", ["MedicationRequest/metformin"], True),
    ("Metformin 850 mg", ["MedicationRequest/metformin"], False),
    ("Lisinopril 10 mg daily", ["MedicationRequest/metformin"], False),  # drug not cited
    ("Metformin for diabetes", [A1C], False),  # drug named, order not cited
    # medicationReference: the Medication's code and brand count for the order.
    ("Atorvastatin 40 mg (Lipitor)", ["MedicationRequest/statin"], True),
    ("Type 2 diabetes since 2019", ["Condition/dm"], True),
    ("A 64-year-old woman with type 2 diabetes", ["Patient/p1", "Condition/dm"], True),
    ("A 71-year-old woman", ["Patient/p1"], False),
    ("HbA1c 7.2%", [], False),  # no citation
    ("HbA1c 7.2%", ["Observation/not-here"], False),  # a citation the chart does not have
    ("HbA1c 7.2%", [A1C, "Observation/not-here"], False),
]


@pytest.mark.parametrize(("text", "refs", "passes"), CASES, ids=[c[0][:40] for c in CASES])
def test_verifier_matching(text, refs, passes):
    result = VERIFIER.check(statement(text, *refs))
    assert result.ok is passes, result.issues
    assert bool(result.issues) is not passes


def test_issues_say_what_failed():
    issues = VERIFIER.check(statement("HbA1c 7.3% on 2025-11-03", A1C)).issues
    assert "'7.3%' is not in the cited resources" in issues
    assert "date '2025-11-03' is not in the cited resources" in issues
    assert VERIFIER.check(statement("HbA1c 7.2 mmol/L", A1C)).issues == (
        "'7.2 mmol/L' has a different unit in the cited resources (%)",
    )
    assert VERIFIER.check(statement("x", "Observation/gone")).issues == (
        "cites Observation/gone, which is not in this chart",
    )
    assert VERIFIER.check(statement("Lisinopril", "MedicationRequest/metformin")).issues == (
        "drug 'lisinopril' is not in the cited resources",
    )


def test_a_drug_a_rule_offers_is_not_checked_as_a_chart_fact():
    # "Consider low-dose aspirin": the built-in rules name the drug they offer (from the
    # reviewed plan options); any other drug named must still be in the citations, and a
    # statement that is not a rule's (an engine's answer) cannot exempt a name.
    offer = "Consider low-dose aspirin to lower the risk of preeclampsia"
    cited = (Citation(reference="Condition/dm", display="Type 2 diabetes"),)
    rule = "USPSTF 2021"

    def check(text: str, **extra):
        return VERIFIER.check(Statement(text=text, citations=cited, **extra))

    assert check(offer, rule=rule, proposes=("aspirin",)).ok
    assert check(offer, rule=rule).issues == ("drug 'aspirin' is not in the cited resources",)
    assert not check(offer, proposes=("aspirin",)).ok
    both = "Consider low-dose aspirin with lisinopril"
    assert check(both, rule=rule, proposes=("aspirin",)).issues == (
        "drug 'lisinopril' is not in the cited resources",
    )


def test_identifiers_are_not_evidence():
    # An MRN or a phone number is not a clinical value: it cannot ground a statement.
    assert VERIFIER.check(statement("Female, 64", "Patient/p1")).ok
    assert not VERIFIER.check(statement("Record 12345", "Patient/p1")).ok
    assert not VERIFIER.check(statement("Call 555 0100", "Patient/p1")).ok


@pytest.mark.parametrize(
    ("a", "b"),
    [("mm[Hg]", "mmHg"), ("mL/min/{1.73_m2}", "mL/min/1.73 m2"), ("10*3/uL", "x10^3/uL"),
     ("Cel", "°C"), ("/min", "beats/minute"), ("%", "percent"), ("[iU]/L", "U/L")],
)  # fmt: skip
def test_unit_spellings_are_one_unit(a, b):
    assert canonical_unit(a) == canonical_unit(b)


def _suggestion(*statements: Statement) -> Suggestion:
    return Suggestion(kind="vitals_labs", title="t", statements=statements, engine=BUILTIN_INFO)


def test_drop_mode_removes_failing_statements_and_counts_them():
    good, bad = statement("HbA1c 7.2%", A1C), statement("HbA1c 9.9%", A1C)
    [result] = verify_suggestions([_suggestion(good, bad)], VERIFIER, unverified="drop")
    assert [s.text for s in result.statements] == ["HbA1c 7.2%"]
    assert result.statements[0].verified is True
    assert result.verification is not None
    assert result.verification.to_json() == {
        "checked": 2,
        "passed": 1,
        "dropped": 1,
        "unverifiedShown": 0,
    }


def test_mark_mode_keeps_failing_statements_marked_with_issues():
    good, bad = statement("HbA1c 7.2%", A1C), statement("HbA1c 9.9%", A1C)
    [result] = verify_suggestions([_suggestion(good, bad)], VERIFIER, unverified="mark")
    assert [s.verified for s in result.statements] == [True, False]
    assert result.statements[1].issues == ("'9.9%' is not in the cited resources",)
    assert result.verification is not None
    assert (result.verification.dropped, result.verification.unverified_shown) == (0, 1)


def test_suggestion_with_nothing_verified_comes_back_empty():
    [result] = verify_suggestions([_suggestion(statement("HbA1c 9.9%", A1C))], VERIFIER)
    assert result.statements == ()
    assert result.verification is not None and result.verification.dropped == 1


# -- UCUM units, implausible values, contradictions --------------------------------------

from smartapp.suggestions import units  # noqa: E402
from smartapp.suggestions.grounding import find_numbers  # noqa: E402

UCUM_CODES = [
    "mg/mg", "ug/dL", "ug/mL", "mmol/mol", "%", "mL/min/{1.73_m2}", "10*3/uL", "[lb_av]", "kg",
]  # fmt: skip


@pytest.mark.parametrize("code", UCUM_CODES)
def test_ucum_units_parse_and_are_read_whole_after_a_number(code):
    assert units.parse(code) is not None
    [mention] = find_numbers(f"value 4.2 {code} today")
    assert mention.raw_unit == code or canonical_unit(mention.raw_unit) == canonical_unit(code)


def test_ucum_equivalence_and_conversion():
    assert units.same_unit("10*3/uL", "10*9/L")
    assert not units.same_unit("mg/mg", "%")
    assert units.convert(200, "[lb_av]", "kg") == pytest.approx(90.718474)


def _one_chart(*resources):
    patient = {"resourceType": "Patient", "id": "p9", "birthDate": "1994-01-01"}
    return build_snapshot(
        [patient, *resources], patient_id="p9", fetched_at=datetime(2026, 11, 15, tzinfo=UTC)
    )


def test_protein_creatinine_ratio_in_mg_per_mg_verifies():
    snapshot = _one_chart(
        _obs("upcr", "2890-2", 0.42, "mg/mg", "mg/mg", "2026-11-10")
        | {"subject": {"reference": "Patient/p9"}}
    )
    check = GroundingVerifier(snapshot).check(
        statement("Protein/creatinine ratio 0.42 mg/mg on 2026-11-10", "Observation/upcr")
    )
    assert check.ok, check.issues
    wrong = GroundingVerifier(snapshot).check(
        statement("Protein/creatinine ratio 0.42 mg/mmol on 2026-11-10", "Observation/upcr")
    )
    assert not wrong.ok


def test_a_309_digit_value_is_never_verified():
    huge = "9" * 309
    snapshot = _one_chart(
        _obs("cr", "2160-0", 1.0, "mg/dL", "mg/dL", "2026-11-10")
        | {"subject": {"reference": "Patient/p9"}, "note": [{"text": f"creatinine {huge}"}]}
    )
    check = GroundingVerifier(snapshot).check(
        statement(f'Creatinine: the note says "creatinine {huge}"', "Observation/cr")
    )
    assert check.ok  # quoted as the chart's words …
    bare = GroundingVerifier(snapshot).check(
        statement(f"Creatinine {huge} mg/dL", "Observation/cr")
    )
    assert not bare.ok and "not a plausible value" in bare.issues[0]  # … never as a finding


def test_no_known_allergy_contradicts_an_active_allergy_but_nkda_record_does_not():
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": "pen",
        "patient": {"reference": "Patient/p9"},
        "code": {"text": "Penicillin"},
    }
    snapshot = _one_chart(allergy)
    check = GroundingVerifier(snapshot).check(statement("No known drug allergies", "Patient/p9"))
    assert not check.ok and "active allergy" in check.issues[-1]
    nkda = dict(allergy, id="nkda", code={"text": "NKDA"})
    assert (
        GroundingVerifier(_one_chart(nkda))
        .check(statement("No known drug allergies", "Patient/p9"))
        .ok
    )


def test_a_stated_age_is_checked_against_the_cited_date_and_the_day_read():
    from datetime import date

    later = GroundingVerifier(SNAPSHOT, today=date(2027, 1, 15))
    assert later.check(statement("HbA1c 7.2% on 2025-11-02 (14 months old)", A1C)).ok
    wrong = later.check(statement("HbA1c 7.2% on 2025-11-02 (13 months old)", A1C))
    assert wrong.issues == ("'(13 months old)' does not match a cited date",)
    # The age's number is not read as a value of its own ("14" is not in the resource).
    assert not any("14" in issue for issue in wrong.issues)


def test_evidence_of_several_resources_is_theirs_read_one_by_one_in_order():
    """The verifier reads each cited resource once per snapshot and joins them: the same
    numbers, dates, times and words, in the same order, as reading the set at once."""
    from smartapp.suggestions.grounding import collect_evidence

    snapshot = build_snapshot(RESOURCES, patient_id="p1")
    verifier = GroundingVerifier(snapshot)
    refs = sorted(f"{r['resourceType']}/{r['id']}" for r in RESOURCES)
    # What each reference brings (a MedicationRequest its Medication too), in order.
    cited = [resource for ref in refs for resource in verifier._cited(ref)]
    assert len(cited) > len(refs)
    together = collect_evidence(cited, today=verifier.today)
    joined = verifier.evidence(refs)
    assert joined.structured == together.structured and joined.free == together.free
    assert verifier.evidence(refs[:1]) is verifier.evidence(refs[:1])
    # A resource's own evidence is not changed by joining it into a set.
    alone = collect_evidence([snapshot.get(refs[0])], today=verifier.today)
    assert verifier.evidence(refs[:1]).structured == alone.structured
