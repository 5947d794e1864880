"""The data-quality screen: events dated after the chart was read, and re-sent results."""

from __future__ import annotations

from datetime import UTC, datetime

from smartapp.fhir.parsing import assemble_snapshot

READ = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _obs(rid: str, when: str, value: float = 4.1, **extra: object) -> dict[str, object]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "subject": {"reference": "Patient/p"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "mmol/L"},
        **extra,
    }


def _snapshot(*resources: dict[str, object]):  # type: ignore[no-untyped-def]
    patient = {"resourceType": "Patient", "id": "p"}
    return assemble_snapshot([patient, *resources], patient_id="p", fetched_at=READ)


def test_events_after_the_read_are_left_out_and_reported() -> None:
    snapshot = _snapshot(
        _obs("today-elsewhere", "2026-11-21T01:00:00+10:00"),  # within the day's grace
        _obs("next-year", "2027-11-20"),
        _obs("next-month", "2026-12"),
        {
            "resourceType": "Immunization",
            "id": "i",
            "status": "completed",
            "patient": {"reference": "Patient/p"},
            "occurrenceDateTime": "2027-01-05",
            "vaccineCode": {"text": "Influenza"},
        },
        # An order or a plan may lie in the future: not screened.
        {
            "resourceType": "MedicationRequest",
            "id": "m",
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/p"},
            "authoredOn": "2027-01-01",
            "medicationCodeableConcept": {"text": "metformin"},
        },
    )
    assert [r["id"] for r in snapshot.of_type("Observation")] == ["today-elsewhere"]
    assert snapshot.of_type("Immunization") == ()
    assert [r["id"] for r in snapshot.of_type("MedicationRequest")] == ["m"]
    assert {(p.code, p.resource_type, p.count) for p in snapshot.problems} == {
        ("future_date", "Observation", 2),
        ("future_date", "Immunization", 1),
    }


def test_a_result_sent_twice_is_counted_once() -> None:
    snapshot = _snapshot(
        _obs("b-copy", "2026-10-01", meta={"lastUpdated": "2026-10-02T00:00:00Z"}),
        _obs("a-first", "2026-10-01"),
        _obs("other-value", "2026-10-01", value=4.4),  # two draws the same day: both kept
        _obs("undated", "", value=4.1),
    )
    kept = sorted(r["id"] for r in snapshot.of_type("Observation"))
    assert kept == ["a-first", "other-value", "undated"]
    [problem] = snapshot.problems
    assert (problem.code, problem.count) == ("duplicate", 1)
