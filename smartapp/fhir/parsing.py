"""Tolerant parsing: validate each resource with the R4B models, skip and report the bad ones.

`fhir.resources`' default (R5) models reject R4 data, so validation uses
`fhir.resources.R4B`, whose shapes match R4 for every type the app reads. Its pydantic
models cost ~0.3 ms a resource, so `fastcheck` first checks each resource in one pass
over tables compiled from the same models; only what it cannot vouch for (in practice,
the bad resources) is validated by R4B, which gives the verdict and the reason. The app keeps the
server's own JSON (validation only decides whether a resource is usable), so a decimal
such as `7.20` reaches the engines as the EHR sent it.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from smartapp.fhir import fastcheck, quality
from smartapp.fhir.fastcheck import MAX_ABS_NUMBER, MAX_JSON_DEPTH, MAX_STRING_CHARS
from smartapp.fhir.snapshot import SNAPSHOT_TYPES, ChartSnapshot, FHIRResource, SnapshotProblem

#: Modifier extensions the app understands (none yet). Any other one may change the meaning
#: of everything in the resource (https://hl7.org/fhir/R4/extensibility.html#modifierExtension),
#: so the resource is skipped and reported rather than read as if it were not there.
UNDERSTOOD_MODIFIERS: frozenset[str] = frozenset()

_SURROGATE = re.compile("[\ud800-\udfff]")


def _bad_text(text: str, *, key: str | None) -> str | None:
    if len(text) > MAX_STRING_CHARS and key != "data":
        return f"a string longer than {MAX_STRING_CHARS} characters"
    if _SURROGATE.search(text):
        # A lone surrogate cannot be written as UTF-8: it would fail far from here (in a
        # log line, the store, the note) instead of in validation.
        return "text that is not valid Unicode (a lone surrogate)"
    return None


def hostile_content(value: Any) -> str | None:
    """Why a parsed resource cannot be used safely, whatever its schema says, or None.

    Iterative (no recursion): nesting deeper than `MAX_JSON_DEPTH`, strings over R4's
    1 MB or with lone surrogates, numbers that are not finite or beyond 18 digits.
    """
    stack: list[tuple[Any, int, str | None]] = [(value, 0, None)]
    while stack:
        item, depth, key = stack.pop()
        if isinstance(item, dict):
            if depth >= MAX_JSON_DEPTH:
                return f"nested more than {MAX_JSON_DEPTH} levels deep"
            for child_key, child in item.items():
                if isinstance(child_key, str) and (why := _bad_text(child_key, key=None)):
                    return why
                stack.append((child, depth + 1, child_key if isinstance(child_key, str) else None))
        elif isinstance(item, list):
            if depth >= MAX_JSON_DEPTH:
                return f"nested more than {MAX_JSON_DEPTH} levels deep"
            stack.extend((child, depth + 1, key) for child in item)
        elif isinstance(item, str):
            if why := _bad_text(item, key=key):
                return why
        elif isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if abs(item) >= MAX_ABS_NUMBER:
                return "a number beyond 18 digits (not a plausible value)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "a number that is not finite"
            if abs(item) >= MAX_ABS_NUMBER:
                return "a number beyond 18 digits (not a plausible value)"
    return None


def unsupported_modifiers(resource: Any) -> list[str]:
    """The URLs of the `modifierExtension`s anywhere in `resource` the app does not understand.

    A modifier on an element (a dosage, a reaction) changes that element's meaning, which
    the app would then state wrongly: anywhere in the resource counts.
    """
    found: list[str] = []
    stack: list[Any] = [resource]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if key == "modifierExtension" and isinstance(child, list):
                    for modifier in child:
                        url = modifier.get("url") if isinstance(modifier, dict) else None
                        if url not in UNDERSTOOD_MODIFIERS:
                            found.append(url if isinstance(url, str) else "(no url)")
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
    return found


@cache
def _model(resource_type: str) -> Any:
    return get_fhir_model_class(resource_type)


def validation_error(resource: Any) -> str | None:
    """None if `resource` is a valid R4 resource; otherwise a reason without patient data."""
    if fastcheck.certainly_valid(resource) is not None:
        return None
    return _r4b_error(resource)


def _r4b_error(resource: Any) -> str | None:
    """R4B's verdict (the slow path, and the last word): None or why not."""
    if not isinstance(resource, dict):
        return "not a JSON object"
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return "no resourceType"
    try:
        model = _model(resource_type)
    except (ValueError, KeyError):
        return f"unknown resourceType {resource_type[:40]!r}"
    hostile = hostile_content(resource)
    if hostile is not None:
        return hostile
    try:
        model.model_validate(resource)
    except RecursionError:
        return "nested too deeply to validate"
    except ValidationError as exc:
        # Field paths only: pydantic's messages quote the offending input, which may be PHI.
        fields = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
        return "invalid " + ", ".join(fields[:5])
    return None


def rejection(resource: Any) -> tuple[str, str] | None:
    """(problem code, reason) when the resource is not to be used, else None.

    `invalid_resource`: it fails R4 validation or is hostile (`hostile_content`);
    `unsupported_modifier`: a valid resource with a modifier extension the app does not
    understand. Reasons never quote the resource (it may hold PHI); a modifier's URL is a
    definition, not patient data, but is cut short all the same.
    """
    # The fast check vouches for nearly every resource in one pass; what it is not sure
    # about goes to R4B (about 20x slower), which gives the verdict and the reason.
    vouched = fastcheck.certainly_valid(resource)
    if vouched is None:
        error = _r4b_error(resource)
        if error is not None:
            return "invalid_resource", error
        modifiers = unsupported_modifiers(resource)
    else:
        modifiers = [url for url in vouched if url not in UNDERSTOOD_MODIFIERS]
    if modifiers:
        return "unsupported_modifier", f"modifierExtension {modifiers[0][:80]!r}"
    return None


class ResourceValidator:
    """Validates resources as they arrive, keeping the valid ones and counting the bad by type.

    The chart loader feeds it each round's resources while the next round is on the wire.
    """

    def __init__(self) -> None:
        self.valid: list[FHIRResource] = []
        self._bad: Counter[tuple[str, str]] = Counter()
        #: The first few distinct reasons per key, for the problem's detail.
        self._reasons: dict[tuple[str, str], list[str]] = {}

    def add(self, resources: Iterable[Any]) -> None:
        for resource in resources:
            rejected = rejection(resource)
            if rejected is None:
                self.valid.append(resource)
                continue
            code, reason = rejected
            rtype = resource.get("resourceType") if isinstance(resource, dict) else None
            key = (code, rtype if isinstance(rtype, str) and len(rtype) <= 64 else "unknown")
            self._bad[key] += 1
            reasons = self._reasons.setdefault(key, [])
            if reason not in reasons and len(reasons) < 3:
                reasons.append(reason)

    def problems(self) -> list[SnapshotProblem]:
        """One problem per (code, resource type) that had resources skipped."""
        out: list[SnapshotProblem] = []
        for (code, rtype), count in sorted(self._bad.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            reason = "; ".join(self._reasons[(code, rtype)])
            if code == "unsupported_modifier":
                detail = (
                    f"{count} {rtype} resource(s) skipped: a modifier extension the app does "
                    f"not understand may change what they mean ({reason})"
                )
            else:
                detail = (
                    f"{count} {rtype} resource(s) skipped: not valid or not safe to read ({reason})"
                )
            out.append(SnapshotProblem(code=code, resource_type=rtype, detail=detail, count=count))
        return out


def parse_resources(
    resources: Iterable[Any],
) -> tuple[list[FHIRResource], list[SnapshotProblem]]:
    """Split resources into the valid ones and one problem per resource type that had bad ones."""
    validator = ResourceValidator()
    validator.add(resources)
    return validator.valid, validator.problems()


def warm_up(resource_types: Iterable[str] = ("Patient", "Encounter", *SNAPSHOT_TYPES)) -> None:
    """Build the R4B model classes and the fast check's tables now (about 0.2 s), not
    during the first chart load."""
    for resource_type in resource_types:
        _model(resource_type)
    fastcheck.warm_up(resource_types)


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
