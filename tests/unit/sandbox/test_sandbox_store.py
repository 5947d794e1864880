"""Unit: the sandbox store's resources, listed from SQLite (decoded once while unchanged)."""

from __future__ import annotations

from pathlib import Path

from smartapp.sandbox.store import Store


def _observation(value: float) -> dict:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"text": "heart rate"},
        "subject": {"reference": "Patient/p1"},
        "valueQuantity": {"value": value, "unit": "/min"},
    }


def test_a_listed_resource_is_decoded_again_only_when_it_changed(tmp_path: Path):
    store = Store(tmp_path / "ehr.sqlite3")
    try:
        store.put(_observation(60), patient="p1")
        [first] = store.list("Observation", patient="p1")
        [again] = store.list("Observation", patient="p1")
        assert again.body is first.body  # the same decoded body: no second decode

        store.put(_observation(72), patient="p1")
        [changed] = store.list("Observation", patient="p1")
        assert changed.body is not first.body
        assert changed.body["valueQuantity"]["value"] == 72
        assert changed.version == first.version + 1
        assert first.body["valueQuantity"]["value"] == 60  # what was handed out stays as it was
    finally:
        store.close()
