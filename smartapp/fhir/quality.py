"""Chart data that parses but cannot be true: screened out before any engine reads it.

Two kinds are common in real feeds and were shown as fact before this screen:

- a result, procedure or vaccination dated after the day the chart was read (a clock or
  interface error; a future date would become "the latest potassium");
- the same result sent twice under two ids (a re-sent HL7 message, a merged record): the
  copy became the "previous" reading, so a trend said "unchanged since" itself.

Each is left out and reported as a `SnapshotProblem`, so the sidebar says what was not used.
Planned things (orders, appointments, care plans) may lie in the future and are not screened.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from smartapp.fhir.snapshot import FHIRResource, SnapshotProblem

#: Where each screened type says when it happened (the first present wins).
EVENT_TIME_FIELDS: Mapping[str, tuple[str, ...]] = {
    "Observation": ("effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued"),
    "Procedure": ("performedDateTime", "performedPeriod"),
    "Immunization": ("occurrenceDateTime",),
}
#: A day's grace: an EHR in another time zone may date this morning's result "tomorrow".
FUTURE_GRACE = timedelta(days=1)
#: What makes two observations one measurement (the id, meta and narrative do not).
_MEASUREMENT_FIELDS = (
    "status",
    "code",
    "effectiveDateTime",
    "effectivePeriod",
    "effectiveInstant",
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "component",
)


def _event_time(resource: Mapping[str, Any]) -> datetime | None:
    for name in EVENT_TIME_FIELDS.get(str(resource.get("resourceType")), ()):
        value = resource.get(name)
        if isinstance(value, Mapping):  # a Period: when it started
            value = value.get("start")
        if isinstance(value, str) and value:
            return _parse(value)
    return None


def _parse(value: str) -> datetime | None:
    """FHIR date, dateTime or instant; a partial date counts from its first day."""
    text = value.strip()
    if len(text) == 4:
        text += "-01-01"
    elif len(text) == 7:
        text += "-01"
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _fingerprint(obs: Mapping[str, Any]) -> str | None:
    """The measurement itself, as canonical JSON; None when it carries no value at all."""
    present = {k: obs[k] for k in _MEASUREMENT_FIELDS if k in obs}
    if not any(k.startswith("value") or k == "component" for k in present):
        return None
    if not any(k.startswith("effective") for k in present):
        return None  # undated: two copies cannot be told from two measurements
    return json.dumps(present, sort_keys=True, default=str)


def _leaf(value: Any) -> Any:
    """A part of `_rough_key`: values whose canonical JSON is the same give the same leaf."""
    if isinstance(value, dict | list):
        return None
    return value if type(value) is str else str(value)


def _rough_key(obs: Mapping[str, Any]) -> tuple[Any, ...]:
    """What two Observations with the same fingerprint surely share, cheap to work out: the
    fingerprint (canonical JSON, the costly part of the screen) is worked out only for
    Observations that share this with another."""
    code = obs.get("code")
    codings = code.get("coding") if isinstance(code, dict) else None
    first = codings[0] if isinstance(codings, list) and codings else None
    return (
        tuple(k for k in _MEASUREMENT_FIELDS if k in obs),
        _leaf(first.get("code")) if isinstance(first, dict) else None,
        _leaf(obs.get("effectiveDateTime")),
    )


def screen(
    grouped: Mapping[str, Mapping[str, FHIRResource]], fetched_at: datetime
) -> tuple[dict[str, dict[str, FHIRResource]], list[SnapshotProblem]]:
    """The resources to keep, by type and id, and one problem per kind of thing left out."""
    limit = fetched_at + FUTURE_GRACE
    kept: dict[str, dict[str, FHIRResource]] = {}
    future: dict[str, int] = {}
    duplicates = 0
    for rtype, by_id in grouped.items():
        out: dict[str, FHIRResource] = {}
        seen: set[str] = set()
        rough = {rid: _rough_key(r) for rid, r in by_id.items()} if rtype == "Observation" else {}
        shared = Counter(rough.values())
        # Sorted by id so that which copy is kept does not depend on the server's order.
        for rid in sorted(by_id):
            resource = by_id[rid]
            moment = _event_time(resource)
            if moment is not None and moment > limit:
                future[rtype] = future.get(rtype, 0) + 1
                continue
            if rid in rough and shared[rough[rid]] > 1:
                print_ = _fingerprint(resource)
                if print_ is not None and print_ in seen:
                    duplicates += 1
                    continue
                if print_ is not None:
                    seen.add(print_)
            out[rid] = resource
        # Keep the server's order for what remains (engines sort by date themselves).
        kept[rtype] = {rid: r for rid, r in by_id.items() if rid in out}
    problems = [
        SnapshotProblem(
            code="future_date",
            resource_type=rtype,
            detail=f"{count} {rtype} resource(s) dated after the day the chart was read: not used",
            count=count,
        )
        for rtype, count in sorted(future.items())
    ]
    if duplicates:
        problems.append(
            SnapshotProblem(
                code="duplicate",
                resource_type="Observation",
                detail=f"{duplicates} Observation resource(s) repeat another's code, time and "
                "value under another id: counted once",
                count=duplicates,
            )
        )
    return kept, problems
