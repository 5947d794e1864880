"""The FHIR resources a saved note becomes: a US Core DocumentReference and its Provenance.

- US Core DocumentReference (clinical note): https://hl7.org/fhir/us/core/StructureDefinition-us-core-documentreference.html
- HL7 AI Transparency on FHIR: `meta.security` AIAST and a Provenance whose agent is a
  Device describing the AI: https://build.fhir.org/ig/HL7/aitransparency-ig/
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

LOINC = "http://loinc.org"
US_CORE_DOC_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
V3_OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
V3_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
AI_PROVENANCE_PROFILE = "http://hl7.org/fhir/uv/aitransparency/StructureDefinition/AI-Provenance"
PROVENANCE_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
#: Our identifier system for notes: it makes a retried write find the first one (If-None-Exist).
#: The note's business identifier: its own system, never a urn:uuid a server may rewrite
#: as it resolves a transaction's fullUrls (FHIR lets it, in any element of type uri).
NOTE_IDENTIFIER_SYSTEM = "https://smartapp.invalid/fhir/sid/note-id"
#: Tags the Provenance of one revision of a note: R4 Provenance has no `identifier`, so
#: `_tag` (a search parameter of every resource) is what a conditional create can match.
NOTE_REVISION_TAG_SYSTEM = "https://smartapp.invalid/fhir/sid/note-revision"
NOTE_TYPE = {"system": LOINC, "code": "11506-3", "display": "Progress note"}

AI_ASSISTED_LABEL = {
    "system": V3_OBSERVATION_VALUE,
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}


@dataclass(frozen=True, kw_only=True)
class NoteDraft:
    """What the clinician signed off, and everything needed to label where it came from."""

    note_id: str  # our own id (uuid hex), also the DocumentReference identifier
    text: str
    patient_id: str
    encounter_id: str | None
    author: str | None  # "Practitioner/123" (relative), from the id_token's fhirUser
    engines: Sequence[tuple[str, str]]  # (name, version) of every engine that drafted a part
    created_at: datetime
    #: Whether an engine drafted any of `text`: only then is it labelled AI-assisted.
    ai_assisted: bool = True
    #: The earlier draft this one replaces, when that one could not be updated in place.
    replaces: str | None = None
    #: DocumentReference.type (LOINC), from the site's `[note]` table.
    doc_type: Mapping[str, str] = field(default_factory=lambda: dict(NOTE_TYPE))
    #: What the document is called (its attachment title); default: the type's display.
    title: str | None = None


def note_identifier(note_id: str) -> dict[str, str]:
    return {"system": NOTE_IDENTIFIER_SYSTEM, "value": _as_uuid(note_id)}


def revision_tag(note_id: str, revision: int) -> dict[str, str]:
    """The tag naming one revision of a note: its identifier and the revision number."""
    return {"system": NOTE_REVISION_TAG_SYSTEM, "code": f"{_as_uuid(note_id)}/{revision}"}


def revision_provenance(
    draft: NoteDraft, *, target: str, revision: int
) -> tuple[dict[str, Any], str]:
    """The Provenance of a revision written over the draft, and its `If-None-Exist` search.

    Conditional on the revision's tag, so a retry after a lost response finds the
    Provenance the first attempt wrote instead of adding a second one for that revision.
    """
    resource = provenance(draft, target=target, activity="UPDATE")
    tag = revision_tag(draft.note_id, revision)
    resource.setdefault("meta", {})["tag"] = [tag]
    return resource, f"_tag={tag['system']}|{tag['code']}"


def _as_uuid(hex_id: str) -> str:
    h = hex_id.replace("-", "")
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def document_reference(draft: NoteDraft, *, existing_id: str | None = None) -> dict[str, Any]:
    """A preliminary US Core clinical note: the clinician signs it in the EHR."""
    name = draft.title or draft.doc_type.get("display") or "Clinical note"
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "meta": {"security": [AI_ASSISTED_LABEL]} if draft.ai_assisted else {},
        "identifier": [note_identifier(draft.note_id)],
        "status": "current",
        "docStatus": "preliminary",
        "type": {"coding": [dict(draft.doc_type)], "text": draft.doc_type.get("display") or name},
        "category": [
            {
                "coding": [
                    {
                        "system": US_CORE_DOC_CATEGORY,
                        "code": "clinical-note",
                        "display": "Clinical Note",
                    }
                ]
            }
        ],
        "subject": {"reference": f"Patient/{draft.patient_id}"},
        "date": draft.created_at.isoformat(timespec="seconds"),
        "description": f"Draft {name.lower()} (AI-assisted, reviewed by the author)"
        if draft.ai_assisted
        else f"Draft {name.lower()}",
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "language": "en",
                    "data": base64.b64encode(draft.text.encode("utf-8")).decode("ascii"),
                    "title": f"{name} (draft)",
                    "creation": draft.created_at.isoformat(timespec="seconds"),
                }
            }
        ],
        "context": {"period": {"start": draft.created_at.isoformat(timespec="seconds")}},
    }
    if not resource["meta"]:
        del resource["meta"]
    if existing_id:
        resource["id"] = existing_id
    if draft.author:
        resource["author"] = [{"reference": draft.author}]
    if draft.encounter_id:
        resource["context"]["encounter"] = [{"reference": f"Encounter/{draft.encounter_id}"}]
    if draft.replaces:
        resource["relatesTo"] = [{"code": "replaces", "target": {"reference": draft.replaces}}]
    return resource


def _engine_device(index: int, name: str, version: str) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "id": f"engine{index}",
        "deviceName": [{"name": name, "type": "model-name"}],
        "version": [{"value": version}],
        "type": {
            "text": "Rule-based documentation engine"
            if name.startswith("builtin")
            else "AI language model"
        },
    }


def provenance(draft: NoteDraft, *, target: str, activity: str = "CREATE") -> dict[str, Any]:
    """Who made the note: the clinician (author, verifier) and each engine (a contained Device).

    Contained Devices work where an EHR does not let apps create Device resources.
    """
    recorded = draft.created_at.isoformat(timespec="seconds")
    devices = [_engine_device(i, n, v) for i, (n, v) in enumerate(draft.engines, start=1)]
    agents: list[dict[str, Any]] = []
    if draft.author:
        for role in ("author", "verifier"):
            agents.append(
                {
                    "type": {"coding": [{"system": PROVENANCE_PARTICIPANT, "code": role}]},
                    "who": {"reference": draft.author},
                }
            )
    for device in devices:
        # The IG's examples record the AI as an author agent; the clinician verified it.
        agents.append(
            {
                "type": {"coding": [{"system": PROVENANCE_PARTICIPANT, "code": "author"}]},
                "who": {
                    "reference": f"#{device['id']}",
                    "display": device["deviceName"][0]["name"],
                },
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [{"reference": target}],
        "recorded": recorded,
        "occurredDateTime": recorded,
        "activity": {"coding": [{"system": V3_DATA_OPERATION, "code": activity}]},
        "agent": agents,
    }
    if devices:
        resource["contained"] = devices
        resource["meta"] = {"profile": [AI_PROVENANCE_PROFILE], "security": [AI_ASSISTED_LABEL]}
    return resource


def transaction_bundle(draft: NoteDraft) -> dict[str, Any]:
    """One transaction: the note and its Provenance land together or not at all.

    The DocumentReference is created conditionally on our identifier, so a retried
    transaction finds the note the first attempt wrote instead of writing a second one.
    """
    # The entry's fullUrl is a fresh name for this one request, distinct from the note's
    # identifier, so nothing a server substitutes for it can change what a retry matches.
    doc_full_url = f"urn:uuid:{uuid.uuid4()}"
    ident = note_identifier(draft.note_id)
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": doc_full_url,
                "resource": document_reference(draft),
                "request": {
                    "method": "POST",
                    "url": "DocumentReference",
                    "ifNoneExist": f"identifier={ident['system']}|{ident['value']}",
                },
            },
            {
                "resource": provenance(draft, target=doc_full_url),
                # Conditional too: a retry finds the Provenance of the note it finds.
                "request": {
                    "method": "POST",
                    "url": "Provenance",
                    "ifNoneExist": f"target={doc_full_url}",
                },
            },
        ],
    }
