"""Unit: the sandbox store's resources, listed from SQLite (decoded once while unchanged)."""

from __future__ import annotations

import json
from pathlib import Path

from smartapp.sandbox.fhir_api import encode_json
from smartapp.sandbox.fhir_service import Access, FHIRService
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


def test_a_search_sees_a_changed_resource_anew(tmp_path: Path):
    # What searches work out from a stored body (a clause's verdict, the sort date) is kept
    # with that version only.
    store = Store(tmp_path / "ehr.sqlite3")
    service = FHIRService(store, base_url="http://ehr.test/fhir")
    system = Access.system()
    try:
        store.put(_observation(60), patient="p1")
        assert service.search(system, "Observation", [("status", "final")])["total"] == 1
        store.put({**_observation(72), "status": "amended"}, patient="p1")
        [entry] = service.search(system, "Observation", [("status", "amended")])["entry"]
        assert entry["resource"]["valueQuantity"]["value"] == 72
        assert service.search(system, "Observation", [("status", "final")])["total"] == 0
    finally:
        store.close()


def test_a_page_carries_the_stored_text_of_each_resource_as_encoded_json(tmp_path: Path):
    store = Store(tmp_path / "ehr.sqlite3")
    service = FHIRService(store, base_url="http://ehr.test/fhir")
    try:
        store.put(_observation(60), patient="p1")
        noted = {**_observation(61), "id": "o2", "note": [{"text": "Zoë, 7.20 °C"}]}
        store.put(noted, patient="p1")
        batch = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"request": {"method": "GET", "url": "Observation?patient=p1"}},
                {"request": {"method": "GET", "url": "Observation/o1"}},
            ],
        }
        answer = service.process_bundle(Access.system(), batch)
        compact = json.dumps(answer, ensure_ascii=False, separators=(",", ":"))
        assert encode_json(answer, store.stored_text) == compact
        assert json.loads(encode_json(answer, store.stored_text)) == answer
        # A body that is not the very one listed (a read decodes its own) is encoded anew.
        [listed] = store.list("Observation", patient="p1")[:1]
        assert store.stored_text(listed.body) is not None
        assert store.stored_text(dict(listed.body)) is None
    finally:
        store.close()


def test_a_list_read_again_sees_what_another_connection_wrote(tmp_path: Path):
    # The same list asked again reads no rows while nothing changed; a write by this store
    # or by another connection to the file is seen at once.
    store, other = Store(tmp_path / "ehr.sqlite3"), Store(tmp_path / "ehr.sqlite3")
    try:
        store.put(_observation(60), patient="p1")
        [first] = store.list("Observation", patient="p1")
        [again] = store.list("Observation", patient="p1")
        assert again is first
        other.put({**_observation(61), "id": "o2"}, patient="p1")
        assert [o.id for o in store.list("Observation", patient="p1")] == ["o1", "o2"]
        store.put(_observation(72), patient="p1")
        [changed, _] = store.list("Observation", patient="p1")
        assert changed.body["valueQuantity"]["value"] == 72
    finally:
        store.close()
        other.close()
