"""Unit: the DocumentReference and Provenance a saved note becomes (US Core, AI Transparency)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from fhir.resources.R4B import get_fhir_model_class

from smartapp.notes.documents import NoteDraft, document_reference, provenance, transaction_bundle

DRAFT = NoteDraft(
    note_id="0123456789abcdef0123456789abcdef",
    text="Problems\n- Type 2 diabetes (since 2019-04-02)",
    patient_id="p1",
    encounter_id="e1",
    author="Practitioner/dr-1",
    engines=[("builtin-rules", "1.0.0")],
    created_at=datetime(2026, 11, 23, 9, 30, tzinfo=UTC),
)


def test_document_reference_is_a_preliminary_us_core_clinical_note():
    doc = document_reference(DRAFT)
    get_fhir_model_class("DocumentReference").model_validate(doc)
    assert doc["status"] == "current"
    assert doc["docStatus"] == "preliminary"
    assert doc["type"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "11506-3",
        "display": "Progress note",
    }
    assert doc["category"][0]["coding"][0]["code"] == "clinical-note"
    assert doc["subject"] == {"reference": "Patient/p1"}
    assert doc["context"]["encounter"] == [{"reference": "Encounter/e1"}]
    assert doc["author"] == [{"reference": "Practitioner/dr-1"}]
    attachment = doc["content"][0]["attachment"]
    assert attachment["contentType"].startswith("text/plain")
    assert base64.b64decode(attachment["data"]).decode() == DRAFT.text


def test_ai_assisted_note_carries_the_aiast_label():
    doc = document_reference(DRAFT)
    assert {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "AIAST",
        "display": "Artificial Intelligence asserted",
    } in doc["meta"]["security"]


def test_provenance_names_the_clinician_and_the_engine_as_a_device():
    prov = provenance(DRAFT, target="DocumentReference/9")
    get_fhir_model_class("Provenance").model_validate(prov)
    assert prov["target"] == [{"reference": "DocumentReference/9"}]
    roles = {(a["type"]["coding"][0]["code"], a["who"]["reference"]) for a in prov["agent"]}
    assert ("author", "Practitioner/dr-1") in roles
    assert ("verifier", "Practitioner/dr-1") in roles
    device = prov["contained"][0]
    assert ("author", f"#{device['id']}") in roles
    assert device["deviceName"][0]["name"] == "builtin-rules"
    assert device["version"][0]["value"] == "1.0.0"


def test_transaction_is_idempotent_on_the_note_identifier():
    bundle = transaction_bundle(DRAFT)
    get_fhir_model_class("Bundle").model_validate(bundle)
    doc_entry, prov_entry = bundle["entry"]
    ident = doc_entry["resource"]["identifier"][0]
    assert doc_entry["request"]["ifNoneExist"] == f"identifier={ident['system']}|{ident['value']}"
    assert ident["value"] == "01234567-89ab-cdef-0123-456789abcdef"
    # The fullUrl is the request's own name, never the identifier a server may rewrite.
    assert doc_entry["fullUrl"] not in (ident["value"], f"urn:uuid:{ident['value']}")
    assert not ident["system"].startswith("urn:")
    assert prov_entry["resource"]["target"][0]["reference"] == doc_entry["fullUrl"]
    assert prov_entry["request"]["ifNoneExist"] == f"target={doc_entry['fullUrl']}"


def test_a_note_written_without_ai_has_no_ai_label():
    manual = NoteDraft(**{**DRAFT.__dict__, "engines": [], "ai_assisted": False})
    assert "meta" not in document_reference(manual)
    assert "contained" not in provenance(manual, target="DocumentReference/1")


class _NoTagSearchEHR:
    """An EHR that cannot search Provenance by `_tag`: it refuses the condition with 400."""

    def __init__(self) -> None:
        self.created: list[tuple[dict[str, object], str | None]] = []

    def create(
        self, resource: dict[str, object], *, if_none_exist: str | None = None
    ) -> dict[str, object]:
        from smartapp.fhir.client import FHIRRequestRefused

        if if_none_exist:
            raise FHIRRequestRefused("Unknown search parameter _tag", status=400)
        self.created.append((resource, if_none_exist))
        return {**resource, "id": f"prov-{len(self.created)}"}


def test_a_revision_provenance_is_written_unconditionally_where_the_condition_is_refused():
    from smartapp.notes.documents import revision_tag
    from smartapp.notes.writeback import write_revision_provenance

    ehr = _NoTagSearchEHR()
    written = write_revision_provenance(
        ehr,  # type: ignore[arg-type]
        DRAFT,
        reference="DocumentReference/doc-1",
        revision=2,
    )
    assert written == "Provenance/prov-1"
    ((resource, condition),) = ehr.created
    assert condition is None
    assert resource["meta"]["tag"] == [revision_tag(DRAFT.note_id, 2)]  # type: ignore[index]
