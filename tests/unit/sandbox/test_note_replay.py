"""The app's own note transaction, replayed against a server that rewrites urn:uuid values."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask import Flask
from sandbox_helpers import SmartClient, bearer, make_ehr

from smartapp.notes.documents import (
    NoteDraft,
    note_identifier,
    revision_provenance,
    revision_tag,
    transaction_bundle,
)

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


def test_a_replayed_revision_provenance_is_written_once(rewriting_ehr: Flask) -> None:
    """A revision's Provenance, sent again after a lost response, finds the first one."""
    client = rewriting_ehr.test_client()
    token = SmartClient(client).token("pt-01")
    created = client.post("/fhir", json=transaction_bundle(DRAFT), headers=bearer(token))
    assert created.status_code == 200, created.get_data(as_text=True)
    documents = client.get("/_sandbox/resources/DocumentReference?patient=pt-01").get_json()
    ident = note_identifier(DRAFT.note_id)
    (document,) = [d for d in documents if ident in d.get("identifier", [])]
    target = f"DocumentReference/{document['id']}"

    def send(revision: int) -> int:
        resource, condition = revision_provenance(DRAFT, target=target, revision=revision)
        answer = client.post(
            "/fhir/Provenance", json=resource, headers={**bearer(token), "If-None-Exist": condition}
        )
        return answer.status_code

    assert [send(2), send(2)] == [201, 200]  # the replay found the revision's Provenance

    def tagged(revision: int) -> list[dict[str, object]]:
        tag = revision_tag(DRAFT.note_id, revision)
        provenances = client.get("/_sandbox/resources/Provenance?patient=pt-01").get_json()
        return [p for p in provenances if tag in p.get("meta", {}).get("tag", [])]

    (only,) = tagged(2)
    assert only["target"] == [{"reference": target}]
    assert only["activity"]["coding"][0]["code"] == "UPDATE"
    assert send(3) == 201  # the next revision has its own
    assert len(tagged(3)) == 1 and len(tagged(2)) == 1
