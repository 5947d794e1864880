"""The services this app offers over CDS Hooks, and their prefetch templates.

https://cds-hooks.hl7.org/2.0/#discovery and https://cds-hooks.hl7.org/2.0/#prefetch-template

The templates ask for what the sidebar's own chart read asks for (`smartapp.fhir.chart`),
so that a chart warmed from the prefetch is the chart the sidebar would have read: the
same searches, statuses and categories. A chart of fewer types would change what the
cards say (a screening "due" because its Procedure was not prefetched).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smartapp.fhir.chart import DOCUMENT_ELEMENTS, MEDICATION_INCLUDE, MEDICATION_REQUEST_STATUSES

PATIENT = "{{context.patientId}}"


@dataclass(frozen=True, kw_only=True)
class Prefetch:
    """One prefetch key: its FHIR query and what the chart snapshot takes from it."""

    key: str
    query: str
    #: The resource type the answer holds ("Patient": a read; others: a searchset Bundle).
    resource_type: str
    #: Other types the answer may carry (`_include`d Medications).
    included: tuple[str, ...] = ()
    #: A chart without it is incomplete (MedicationStatement is optional, as for the loader;
    #: the Encounter is needed only when the hook's context names one).
    required: bool = True
    #: A single resource read, not a search.
    read: bool = False
    #: Only the first page is wanted (the latest notes): a `next` link is not a gap.
    first_page_only: bool = False


PREFETCH: tuple[Prefetch, ...] = (
    Prefetch(key="patient", query=f"Patient/{PATIENT}", resource_type="Patient", read=True),
    Prefetch(
        key="encounter",
        query="Encounter/{{context.encounterId}}",
        resource_type="Encounter",
        read=True,
        required=False,
    ),
    Prefetch(key="conditions", query=f"Condition?patient={PATIENT}", resource_type="Condition"),
    Prefetch(
        key="vitalSigns",
        query=f"Observation?patient={PATIENT}&category=vital-signs&_sort=-date",
        resource_type="Observation",
    ),
    Prefetch(
        key="laboratory",
        query=f"Observation?patient={PATIENT}&category=laboratory&_sort=-date",
        resource_type="Observation",
    ),
    Prefetch(
        key="medicationRequests",
        query=f"MedicationRequest?patient={PATIENT}&status={MEDICATION_REQUEST_STATUSES}"
        f"&_include={MEDICATION_INCLUDE}",
        resource_type="MedicationRequest",
        included=("Medication",),
    ),
    Prefetch(
        key="medicationStatements",
        query=f"MedicationStatement?patient={PATIENT}",
        resource_type="MedicationStatement",
        required=False,
    ),
    Prefetch(
        key="allergies",
        query=f"AllergyIntolerance?patient={PATIENT}",
        resource_type="AllergyIntolerance",
    ),
    Prefetch(key="procedures", query=f"Procedure?patient={PATIENT}", resource_type="Procedure"),
    Prefetch(
        key="immunizations", query=f"Immunization?patient={PATIENT}", resource_type="Immunization"
    ),
    Prefetch(
        key="documents",
        query=f"DocumentReference?patient={PATIENT}&_sort=-date&_count=10"
        f"&_elements={DOCUMENT_ELEMENTS}",
        resource_type="DocumentReference",
        first_page_only=True,
    ),
)


@dataclass(frozen=True, kw_only=True)
class CDSService:
    id: str
    hook: str
    title: str
    description: str

    def to_json(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": {p.key: p.query for p in PREFETCH},
        }


_DESCRIPTION = (
    "Reads the chart as the smartapp sidebar does, says what the assistant has ready "
    "(care gaps, medication hints) and links to the sidebar, which then opens on that chart "
    "without reading it again."
)

SERVICES: Mapping[str, CDSService] = {
    s.id: s
    for s in (
        CDSService(
            id="smartapp-patient-view",
            hook="patient-view",
            title="smartapp: documentation assistant",
            description=_DESCRIPTION,
        ),
        CDSService(
            id="smartapp-encounter-start",
            hook="encounter-start",
            title="smartapp: documentation assistant (encounter start)",
            description=_DESCRIPTION,
        ),
    )
}


def discovery_document() -> dict[str, Any]:
    return {"services": [s.to_json() for s in SERVICES.values()]}
