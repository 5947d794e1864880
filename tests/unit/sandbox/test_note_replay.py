"""The app's own note transaction, replayed against a server that rewrites urn:uuid values."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask import Flask
from sandbox_helpers import SmartClient, bearer, make_ehr

from smartapp.notes.documents import NoteDraft, note_identifier, transaction_bundle

DRAFT = NoteDraft(
    note_id="0123456789abcdef0123456789abcdef",
    text="Problems\n- Type 2 diabetes (since 2019-04-02)",
    patient_id="pt-01",
    encounter_id=None,
    author="Practitioner/dr-ada-lovelace",
    engines=[("builtin-rules", "1.0.0")],
    created_at=datetime(2026, 11, 23, 9, 30, tzinfo=UTC),
)


@pytest.fixture
def rewriting_ehr(tmp_path: Path, populated_dir: Path) -> Iterator[Flask]:
    app = make_ehr(tmp_path / "ehr", populated_dir, rewrite_urn_uuids=True)
    yield app
    app.extensions["smartapp.sandbox"].store.close()


def test_a_replayed_note_transaction_creates_nothing_new(rewriting_ehr: Flask) -> None:
    client = rewriting_ehr.test_client()
    token = SmartClient(client).token("pt-01")
    bundle = transaction_bundle(DRAFT)
    first = client.post("/fhir", json=bundle, headers=bearer(token))
    assert first.status_code == 200, first.get_data(as_text=True)
    again = client.post("/fhir", json=bundle, headers=bearer(token))
    assert again.status_code == 200, again.get_data(as_text=True)
    statuses = [e["response"]["status"] for e in again.get_json()["entry"]]
    assert statuses == ["200 OK", "200 OK"]

    documents = client.get("/_sandbox/resources/DocumentReference?patient=pt-01").get_json()
    ident = note_identifier(DRAFT.note_id)
    ours = [d for d in documents if ident in d.get("identifier", [])]
    assert len(ours) == 1  # the identifier survived the server's rewriting
    found = client.get(
        "/fhir/DocumentReference",
        query_string={"identifier": f"{ident['system']}|{ident['value']}"},
        headers=bearer(token),
    ).get_json()
    assert len([e for e in found.get("entry", []) if e["search"]["mode"] == "match"]) == 1
    provenances = client.get("/_sandbox/resources/Provenance?patient=pt-01").get_json()
    assert [p["target"][0]["reference"] for p in provenances] == [
        f"DocumentReference/{ours[0]['id']}"
    ]
