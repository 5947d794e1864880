"""The data-quality screen: events dated after the chart was read, and re-sent results."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from smartapp.fhir import quality
from smartapp.fhir.parsing import assemble_snapshot
from smartapp.sandbox.population import all_resources, generate_population

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


def _every_fingerprint(observations: list[dict[str, object]]) -> list[str]:
    """The screen's verdict worked out the plain way: every Observation's fingerprint."""
    seen: set[str] = set()
    kept = []
    for obs in sorted(observations, key=lambda o: str(o["id"])):
        fingerprint = quality._fingerprint(obs)
        if fingerprint is not None and fingerprint in seen:
            continue
        if fingerprint is not None:
            seen.add(fingerprint)
        kept.append(str(obs["id"]))
    return sorted(kept)


def test_the_screen_drops_what_comparing_every_fingerprint_drops() -> None:
    # The screen skips the fingerprint of an Observation sharing no code, time and fields
    # with another: on a population and its near-copies, it keeps exactly the same ones.
    observations = [
        r for r in all_resources(generate_population(count=4)) if r["resourceType"] == "Observation"
    ]
    copies: list[dict[str, object]] = []
    for i, obs in enumerate(observations[:60]):
        copy = json.loads(json.dumps(obs))
        copy["id"] = f"copy-{i}"
        if i % 4 == 1 and isinstance(copy.get("valueQuantity"), dict):
            copy["valueQuantity"]["value"] = copy["valueQuantity"]["value"] + 1  # another draw
        elif i % 4 == 2:
            copy = {k: copy[k] for k in reversed(copy)}  # the same result, keys reordered
        elif i % 4 == 3:
            copy["effectiveDateTime"] = "2019-02-03"  # another day
        copies.append(copy)
    everything = [*observations, *copies]
    snapshot = _snapshot(*everything)
    assert sorted(r["id"] for r in snapshot.of_type("Observation")) == _every_fingerprint(
        everything
    )
    assert len(snapshot.of_type("Observation")) < len(everything)  # some were copies
