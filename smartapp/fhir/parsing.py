"""Tolerant parsing: validate each resource with the R4B models, skip and report the bad ones.

`fhir.resources`' default (R5) models reject R4 data, so validation uses
`fhir.resources.R4B`, whose shapes match R4 for every type the app reads. The app keeps the
server's own JSON (validation only decides whether a resource is usable), so a decimal
such as `7.20` reaches the engines as the EHR sent it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from smartapp.fhir import quality
from smartapp.fhir.snapshot import SNAPSHOT_TYPES, ChartSnapshot, FHIRResource, SnapshotProblem

# Far deeper than any real resource (each nested extension adds 2 levels), and well
# inside Python's recursion limit, which pydantic's validation of nested extensions hits
# at about 125 levels.
MAX_JSON_DEPTH = 64


def _too_deep(value: Any, limit: int) -> bool:
    """True if `value` nests JSON objects/arrays more than `limit` levels (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


@cache
def _model(resource_type: str) -> Any:
    return get_fhir_model_class(resource_type)


def validation_error(resource: Any) -> str | None:
    """None if `resource` is a valid R4 resource; otherwise a reason without patient data."""
    if not isinstance(resource, dict):
        return "not a JSON object"
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return "no resourceType"
    try:
        model = _model(resource_type)
    except (ValueError, KeyError):
        return f"unknown resourceType {resource_type[:40]!r}"
    if _too_deep(resource, MAX_JSON_DEPTH):
        return f"nested more than {MAX_JSON_DEPTH} levels deep"
    try:
        model.model_validate(resource)
    except RecursionError:
        return "nested too deeply to validate"
    except ValidationError as exc:
        # Field paths only: pydantic's messages quote the offending input, which may be PHI.
        fields = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
        return "invalid " + ", ".join(fields[:5])
    return None


class ResourceValidator:
    """Validates resources as they arrive, keeping the valid ones and counting the bad by type.

    The chart loader feeds it each round's resources while the next round is on the wire.
    """

    def __init__(self) -> None:
        self.valid: list[FHIRResource] = []
        self._bad: Counter[str] = Counter()
        self._reasons: dict[str, str] = {}

    def add(self, resources: Iterable[Any]) -> None:
        for resource in resources:
            error = validation_error(resource)
            if error is None:
                self.valid.append(resource)
                continue
            rtype = resource.get("resourceType") if isinstance(resource, dict) else None
            key = rtype if isinstance(rtype, str) and len(rtype) <= 64 else "unknown"
            self._bad[key] += 1
            self._reasons.setdefault(key, error)

    def problems(self) -> list[SnapshotProblem]:
        """One `invalid_resource` problem per resource type that had bad resources."""
        return [
            SnapshotProblem(
                code="invalid_resource",
                resource_type=rtype,
                detail=f"{count} {rtype} resource(s) skipped: failed R4 validation "
                f"({self._reasons[rtype]})",
                count=count,
            )
            for rtype, count in sorted(self._bad.items())
        ]


def parse_resources(
    resources: Iterable[Any],
) -> tuple[list[FHIRResource], list[SnapshotProblem]]:
    """Split resources into the valid ones and one problem per resource type that had bad ones."""
    validator = ResourceValidator()
    validator.add(resources)
    return validator.valid, validator.problems()


def warm_up(resource_types: Iterable[str] = ("Patient", "Encounter", *SNAPSHOT_TYPES)) -> None:
    """Build the R4B model classes now (about 0.1 s), not during the first chart load."""
    for resource_type in resource_types:
        _model(resource_type)


def build_snapshot(
    resources: Iterable[Any],
    *,
    patient_id: str,
    encounter_id: str | None = None,
    problems: Iterable[SnapshotProblem] = (),
    not_granted: Iterable[str] = (),
    request_count: int = 0,
    fetched_at: datetime | None = None,
) -> ChartSnapshot:
    """A snapshot from a flat list of resources (validated here; duplicates by id dropped)."""
    valid, parse_problems = parse_resources(resources)
    return assemble_snapshot(
        valid,
        patient_id=patient_id,
        encounter_id=encounter_id,
        problems=[*problems, *parse_problems],
        not_granted=not_granted,
        request_count=request_count,
        fetched_at=fetched_at,
    )


def assemble_snapshot(
    valid: Iterable[FHIRResource],
    *,
    patient_id: str,
    encounter_id: str | None = None,
    problems: Iterable[SnapshotProblem] = (),
    not_granted: Iterable[str] = (),
    request_count: int = 0,
    fetched_at: datetime | None = None,
) -> ChartSnapshot:
    """A snapshot from resources that already passed validation (duplicates by id dropped)."""
    patient: FHIRResource | None = None
    encounter: FHIRResource | None = None
    grouped: dict[str, dict[str, FHIRResource]] = defaultdict(dict)
    for resource in valid:
        rtype, rid = resource["resourceType"], resource.get("id")
        if rtype == "Patient" and rid == patient_id:
            patient = resource
        elif rtype == "Encounter" and encounter_id and rid == encounter_id:
            encounter = resource
        if rtype in SNAPSHOT_TYPES:
            # Paged searches and batches can return a resource twice; keep the first.
            grouped[rtype].setdefault(rid or f"#{len(grouped[rtype])}", resource)
    fetched_at = fetched_at or datetime.now(UTC)
    screened, implausible = quality.screen(grouped, fetched_at)
    all_problems = [*problems, *implausible]
    not_granted = tuple(not_granted)
    if patient is None:
        patient = {"resourceType": "Patient", "id": patient_id}
        all_problems.append(
            SnapshotProblem(
                code="scope_not_granted",
                resource_type="Patient",
                detail="the app was not granted access to the Patient resource",
            )
            if "Patient" in not_granted
            else SnapshotProblem(
                code="search_failed",
                resource_type="Patient",
                detail="the Patient resource could not be read",
            )
        )
    return ChartSnapshot(
        patient=patient,
        encounter=encounter,
        resources={t: tuple(screened[t].values()) for t in SNAPSHOT_TYPES if screened.get(t)},
        problems=tuple(all_problems),
        not_granted=not_granted,
        fetched_at=fetched_at,
        request_count=request_count,
    )
