"""Fixture charts for the engines: readable FHIR Bundles in tests/fixtures/suggestions."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from smartapp.fhir.parsing import build_snapshot
from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.suggestions.evaluate import bundle_resources

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "suggestions"
PATIENTS = FIXTURES / "patients"

#: The day the fixture charts are "read": care-gap intervals count back from it.
AS_OF = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


def load_chart(name: str, *, fetched_at: datetime = AS_OF) -> ChartSnapshot:
    bundle = json.loads((PATIENTS / f"{name}.json").read_text(encoding="utf-8"))
    resources, skipped = bundle_resources(bundle)
    assert skipped == 0
    snapshot = build_snapshot(resources, patient_id=resources[0]["id"], fetched_at=fetched_at)
    # Every fixture resource is valid R4; read as of an earlier day, later events are not
    # yet on the chart (the data-quality screen leaves them out).
    expected = (
        ()
        if fetched_at >= AS_OF
        else tuple(p for p in snapshot.problems if p.code == "future_date")
    )
    assert snapshot.problems == expected, snapshot.problems
    return snapshot


@pytest.fixture
def chart() -> Callable[..., ChartSnapshot]:
    return load_chart
