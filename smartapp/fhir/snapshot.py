"""The chart snapshot: everything the app read about one patient in one launch context.

It is the hand-off between `fhir/` (which fills it) and `suggestions/` (which reads it):
plain FHIR R4 JSON dicts that passed validation with `fhir.resources.R4B`, grouped by
resource type, plus what could not be read and why. It holds no tokens and no HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

_T = TypeVar("_T")

FHIRResource = dict[str, Any]

#: The resource types a snapshot gathers, in the order the sidebar lists them.
SNAPSHOT_TYPES: tuple[str, ...] = (
    "Condition",
    "Observation",
    "MedicationRequest",
    "MedicationStatement",
    "Medication",
    "AllergyIntolerance",
    "Procedure",
    "Immunization",
    "DocumentReference",
)


@dataclass(frozen=True, kw_only=True)
class SnapshotProblem:
    """Something the snapshot is missing, told without patient data.

    `code` is one of: `invalid_resource` (failed validation and was skipped),
    `truncated` (more pages than the cap), `scope_not_granted`, `search_failed`,
    `unresolved_reference`, `future_date` and `duplicate` (screened out by
    `smartapp.fhir.quality`), `wrong_patient` (the server sent another patient's resources:
    dropped), `unsupported_modifier` (a `modifierExtension` the app does not understand:
    skipped, since it may change the meaning of everything in the resource),
    `history_incomplete` (the search for recently stopped or completed orders failed or
    stopped at its page cap: past orders may be missing; the current orders are complete).
    """

    code: str
    resource_type: str
    detail: str
    count: int = 1
    #: For `truncated`: whether the pages read were the newest (`_sort=-date` honoured), so
    #: that the latest value is among them; None when not a truncation.
    newest_first: bool | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "code": self.code,
            "resourceType": self.resource_type,
            "detail": self.detail,
            "count": self.count,
        }
        if self.newest_first is not None:
            data["newestFirst"] = self.newest_first
        return data


def reference_key(reference: str) -> str:
    """`Type/id` from a relative or absolute reference (`https://ehr/fhir/Observation/1/_history/2`)."""
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    if len(parts) >= 2:
        return f"{parts[-2]}/{parts[-1]}"
    return reference


@dataclass(frozen=True, kw_only=True)
class ChartSnapshot:
    patient: FHIRResource
    encounter: FHIRResource | None = None
    #: Validated resources by type (keys from SNAPSHOT_TYPES; a type absent means none found).
    resources: Mapping[str, tuple[FHIRResource, ...]] = field(default_factory=dict)
    problems: tuple[SnapshotProblem, ...] = ()
    #: Resource types the granted scopes do not allow the app to read.
    not_granted: tuple[str, ...] = ()
    fetched_at: datetime | None = None
    #: HTTP requests it took to build this snapshot (for the benchmark and the sidebar).
    request_count: int = 0
    _index: dict[str, FHIRResource] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    #: What has been worked out from this snapshot (`derived`): a snapshot never changes.
    _derived: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = self._index
        for resource in self.all_resources():
            rtype, rid = resource.get("resourceType"), resource.get("id")
            if rtype and rid:
                index[f"{rtype}/{rid}"] = resource

    def derived(self, key: str, compute: Callable[[], _T]) -> _T:
        """`compute()`, worked out once per snapshot: the parsed snapshot stays in the
        process's memory across a launch's requests, and what depends on the chart alone
        (what changed since the last visit) need not be worked out on each of them."""
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]  # type: ignore[no-any-return]

    def all_resources(self) -> Iterable[FHIRResource]:
        yield self.patient
        if self.encounter is not None:
            yield self.encounter
        for items in self.resources.values():
            yield from items

    def of_type(self, resource_type: str) -> tuple[FHIRResource, ...]:
        return tuple(self.resources.get(resource_type, ()))

    def get(self, reference: str) -> FHIRResource | None:
        """The resource a reference points at, if the snapshot holds it (relative or absolute)."""
        return self._index.get(reference_key(reference))

    def resolve(self, reference: str, *, within: FHIRResource | None = None) -> FHIRResource | None:
        """Like `get`, but `#id` resolves among `within`'s contained resources."""
        if reference.startswith("#"):
            for contained in (within or {}).get("contained", []):
                if contained.get("id") == reference[1:]:
                    return dict(contained)
            return None
        return self.get(reference)

    def __contains__(self, reference: object) -> bool:
        return isinstance(reference, str) and reference_key(reference) in self._index

    @property
    def patient_id(self) -> str:
        return str(self.patient.get("id", ""))

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe form, for the server-side cache (never sent to the browser whole)."""
        return {
            "patient": self.patient,
            "encounter": self.encounter,
            "resources": {k: list(v) for k, v in self.resources.items()},
            "problems": [p.to_json() for p in self.problems],
            "notGranted": list(self.not_granted),
            "fetchedAt": self.fetched_at.isoformat() if self.fetched_at else None,
            "requestCount": self.request_count,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChartSnapshot:
        fetched = data.get("fetchedAt")
        return cls(
            patient=data["patient"],
            encounter=data.get("encounter"),
            resources={k: tuple(v) for k, v in data.get("resources", {}).items()},
            problems=tuple(
                SnapshotProblem(
                    code=p["code"],
                    resource_type=p["resourceType"],
                    detail=p["detail"],
                    count=p.get("count", 1),
                    newest_first=p.get("newestFirst"),
                )
                for p in data.get("problems", [])
            ),
            not_granted=tuple(data.get("notGranted", [])),
            fetched_at=datetime.fromisoformat(fetched) if fetched else None,
            request_count=int(data.get("requestCount", 0)),
        )
