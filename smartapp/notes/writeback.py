"""Writing a saved note to the EHR: one transaction where the server has them, else two creates.

Both paths are idempotent, so a retry after a lost response cannot write a second note:
the DocumentReference is created conditionally on our identifier, and the Provenance
conditionally on its target. A revision (the clinician saved again) updates the same
draft in place, with a Provenance for the update, unless the draft was signed meanwhile:
a signed note is never overwritten, the revision becomes a new draft instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from smartapp.errors import FatalUpstreamError
from smartapp.fhir.capabilities import supports_transaction
from smartapp.fhir.client import FHIRRequestRefused
from smartapp.fhir.snapshot import reference_key
from smartapp.notes.documents import (
    NoteDraft,
    document_reference,
    note_identifier,
    provenance,
    revision_provenance,
    transaction_bundle,
)

if TYPE_CHECKING:
    from smartapp.fhir.client import FHIRClient


@dataclass(frozen=True, kw_only=True)
class WrittenNote:
    document_reference: str  # "DocumentReference/123"
    provenance: str  # "Provenance/456"


def _location(entry: dict[str, Any], resource_type: str) -> str:
    response = entry.get("response") or {}
    location = response.get("location")
    if not location and isinstance(entry.get("resource"), dict):
        rid = entry["resource"].get("id")
        location = f"{resource_type}/{rid}" if rid else None
    if not location:
        raise FatalUpstreamError("The EHR accepted the note but did not say where it is.")
    key = reference_key(location)
    if not key.startswith(f"{resource_type}/"):
        raise FatalUpstreamError("The EHR answered the note write with an unexpected resource.")
    return key


def write_note(client: FHIRClient, draft: NoteDraft) -> WrittenNote:
    if supports_transaction(client.capabilities()):
        response = client.transaction(transaction_bundle(draft))
        entries = response.get("entry") or []
        if len(entries) != 2:
            raise FatalUpstreamError("The EHR's transaction response did not match the request.")
        return WrittenNote(
            document_reference=_location(entries[0], "DocumentReference"),
            provenance=_location(entries[1], "Provenance"),
        )
    ident = note_identifier(draft.note_id)
    document = client.create(
        document_reference(draft), if_none_exist=f"identifier={ident['system']}|{ident['value']}"
    )
    doc_ref = f"DocumentReference/{document['id']}"
    prov = client.create(provenance(draft, target=doc_ref), if_none_exist=f"target={doc_ref}")
    return WrittenNote(document_reference=doc_ref, provenance=f"Provenance/{prov['id']}")


def draft_is_editable(document: dict[str, Any]) -> bool:
    """Only a preliminary, current note may be overwritten; a signed one is the record."""
    doc_status = str(document.get("docStatus", "preliminary"))
    status = str(document.get("status", "current"))
    return doc_status == "preliminary" and status == "current"


def revise_document(client: FHIRClient, draft: NoteDraft, *, reference: str) -> str | None:
    """Update the draft in place; None when it cannot be (signed, deleted, update refused)."""
    rtype, _, rid = reference.partition("/")
    try:
        current = client.read(rtype, rid)
        if not draft_is_editable(current):
            return None
        updated = client.update(document_reference(draft, existing_id=rid))
    except FHIRRequestRefused as exc:
        # Gone, or an EHR that does not let apps update notes: write a replacing draft.
        if exc.status in (403, 404, 405, 410):
            return None
        raise
    return f"DocumentReference/{updated['id']}"


def write_revision_provenance(
    client: FHIRClient, draft: NoteDraft, *, reference: str, revision: int
) -> str:
    """The Provenance of this revision, once: a retry finds the one written before."""
    resource, condition = revision_provenance(draft, target=reference, revision=revision)
    try:
        created = client.create(resource, if_none_exist=condition)
    except FHIRRequestRefused as exc:
        if exc.status != 400:
            raise
        # A server that cannot search Provenance by `_tag` refuses the condition (400, and
        # nothing was written): write it as before, unconditionally, rather than not at all.
        created = client.create(resource)
    return f"Provenance/{created['id']}"
