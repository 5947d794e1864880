"""A chart snapshot from a hook's prefetch: untrusted chart data, checked as any FHIR read.

https://cds-hooks.hl7.org/2.0/#prefetch-template

The EHR's prefetch passes the same gates as the sidebar's own reads: a resource is kept
only when it names the hook's patient (`smartapp.fhir.compartment`), each resource is
validated with `fhir.resources.R4B` and screened (`smartapp.fhir.parsing`, `quality`),
an answer holds at most what paging would have read, and the snapshot lists what was
dropped and why. Nothing here trusts the EHR to have sent the patient it named.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from smartapp.cdshooks.discovery import PREFETCH, Prefetch
from smartapp.fhir.chart import (
    PATIENT_FIELD,
    RECENT_DOCUMENTS,
    SEARCH_COUNT,
    _without_attachment_data,
)
from smartapp.fhir.compartment import Verdict, identifier_keys, matches_identifiers, verdict
from smartapp.fhir.parsing import build_snapshot
from smartapp.fhir.snapshot import ChartSnapshot, FHIRResource, SnapshotProblem


@dataclass(frozen=True, kw_only=True)
class PrefetchChart:
    """What the prefetch gave: a snapshot (None without the hook's Patient) and its gaps."""

    snapshot: ChartSnapshot | None
    #: Required keys the EHR did not answer (absent, null, or not the kind of answer asked).
    missing: tuple[str, ...]
    #: Every required key answered in full (no `next` page left, nothing over the cap).
    complete: bool


def _base_checks(fhir_server: str) -> tuple[Any, Any]:
    base = fhir_server.rstrip("/")
    parts = urlsplit(base)

    def on_base(url: str) -> bool:
        other = urlsplit(url)
        return (other.scheme, other.netloc) == (parts.scheme, parts.netloc) and (
            other.path.startswith(parts.path.rstrip("/") + "/")
        )

    def relative(url: str) -> str:
        return url[len(base) :].lstrip("/")

    return on_base, relative


def _entries(answer: Any) -> tuple[list[Any], bool] | None:
    """(resources, has_next) of a searchset Bundle; None when it is not one."""
    if not isinstance(answer, Mapping) or answer.get("resourceType") != "Bundle":
        return None
    resources = [
        entry.get("resource")
        for entry in answer.get("entry") or []
        if isinstance(entry, Mapping)
        # OperationOutcomes a server adds to a search say something about it, not the chart.
        and (entry.get("search") or {}).get("mode") != "outcome"
    ]
    has_next = any(
        isinstance(link, Mapping) and link.get("relation") == "next"
        for link in answer.get("link") or []
    )
    return resources, has_next


def chart_from_prefetch(
    prefetch: Any,
    *,
    patient_id: str,
    encounter_id: str | None,
    fhir_server: str,
    max_pages: int,
) -> PrefetchChart:
    """The hook's chart from `prefetch` (the request's object, as sent)."""
    prefetch = prefetch if isinstance(prefetch, Mapping) else {}
    on_base, relative = _base_checks(fhir_server)
    problems: list[SnapshotProblem] = []
    kept: list[FHIRResource] = []
    by_identifier: list[tuple[str, FHIRResource]] = []
    other_patient: Counter[str] = Counter()
    missing: list[str] = []
    complete = True
    patient: FHIRResource | None = None
    # What the loader would read at most per search: its page size times the page cap.
    cap = SEARCH_COUNT * max_pages

    def add(rtype: str, resource: Any) -> None:
        if not isinstance(resource, Mapping):
            return
        field = PATIENT_FIELD.get(rtype)
        if field is not None:
            judged = verdict(
                resource, field, patient_id=patient_id, on_base=on_base, relative=relative
            )
            if judged is Verdict.BY_IDENTIFIER:
                by_identifier.append((rtype, dict(resource)))
                return
            if judged is Verdict.OTHER:
                other_patient[rtype] += 1
                return
        if rtype == "DocumentReference":
            # Metadata only, as the sidebar's own read keeps it: a note's text is PHI.
            resource = _without_attachment_data(dict(resource))
        kept.append(dict(resource))

    for spec in PREFETCH:
        answer = prefetch.get(spec.key)
        needed = spec.required or (spec.key == "encounter" and encounter_id is not None)
        if spec.read:
            resource = answer if isinstance(answer, Mapping) else None
            wanted_id = patient_id if spec.resource_type == "Patient" else encounter_id
            if resource is None or resource.get("resourceType") != spec.resource_type:
                if needed:
                    missing.append(spec.key)
                continue
            if resource.get("id") != wanted_id:
                other_patient[spec.resource_type] += 1
                if needed:
                    missing.append(spec.key)
                continue
            if spec.resource_type == "Patient":
                patient = dict(resource)
                kept.append(patient)
            elif _encounter_is_patients(resource, patient_id, on_base, relative):
                kept.append(dict(resource))
            else:
                other_patient["Encounter"] += 1
                missing.append(spec.key)
            continue
        found = _entries(answer)
        if found is None:
            if needed:
                missing.append(spec.key)
            continue
        resources, has_next = found
        if spec.first_page_only:
            resources, has_next = resources[:RECENT_DOCUMENTS], False
        complete = complete and _search_complete(spec, resources, has_next, cap, problems)
        for resource in resources[:cap]:
            rtype = resource.get("resourceType") if isinstance(resource, Mapping) else None
            if rtype == spec.resource_type or rtype in spec.included:
                add(str(rtype), resource)
            else:
                other_patient[str(rtype or "unknown")] += 1

    keys = identifier_keys((patient or {}).get("identifier"))
    for rtype, resource in by_identifier:
        if matches_identifiers(resource, PATIENT_FIELD[rtype], keys):
            kept.append(resource)
        else:
            other_patient[rtype] += 1
    for rtype, count in sorted(other_patient.items()):
        problems.append(
            SnapshotProblem(
                code="wrong_patient",
                resource_type=rtype,
                detail=f"{count} {rtype} resource(s) in the EHR's prefetch not for this "
                "patient were dropped",
                count=count,
            )
        )
    if patient is None:
        return PrefetchChart(snapshot=None, missing=tuple(missing), complete=False)
    snapshot = build_snapshot(
        kept, patient_id=patient_id, encounter_id=encounter_id, problems=problems
    )
    if any(p.resource_type == "Patient" and p.code != "wrong_patient" for p in snapshot.problems):
        # The Patient failed validation: the snapshot holds a placeholder, not the patient.
        return PrefetchChart(snapshot=None, missing=(*missing, "patient"), complete=False)
    snapshot = _with_unresolved_medications(snapshot)
    return PrefetchChart(
        snapshot=snapshot, missing=tuple(missing), complete=complete and not missing
    )


def _search_complete(
    spec: Prefetch,
    resources: list[Any],
    has_next: bool,
    cap: int,
    problems: list[SnapshotProblem],
) -> bool:
    if has_next or len(resources) > cap:
        read = min(len(resources), cap)
        problems.append(
            SnapshotProblem(
                code="truncated",
                resource_type=spec.resource_type,
                detail=f"{spec.resource_type}: the EHR's prefetch held {read} and more exist",
                count=read,
                newest_first=False,
            )
        )
        return False
    return True


def _encounter_is_patients(
    encounter: Mapping[str, Any], patient_id: str, on_base: Any, relative: Any
) -> bool:
    return (
        verdict(encounter, "subject", patient_id=patient_id, on_base=on_base, relative=relative)
        is Verdict.MINE
    )


def _with_unresolved_medications(snapshot: ChartSnapshot) -> ChartSnapshot:
    """As the loader does: say how many orders name a Medication the chart does not hold."""
    unresolved = 0
    for order in (*snapshot.of_type("MedicationRequest"), *snapshot.of_type("MedicationStatement")):
        ref = (order.get("medicationReference") or {}).get("reference")
        if isinstance(ref, str) and snapshot.resolve(ref, within=order) is None:
            unresolved += 1
    if not unresolved:
        return snapshot
    return replace(
        snapshot,
        problems=(
            *snapshot.problems,
            SnapshotProblem(
                code="unresolved_reference",
                resource_type="Medication",
                detail=f"{unresolved} medication order(s) or statement(s) name a Medication "
                "that could not be read",
                count=unresolved,
            ),
        ),
    )
