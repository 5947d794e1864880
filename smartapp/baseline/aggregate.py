"""From exported Encounters and DocumentReferences to per-clinician weekly aggregates.

Definitions (the README and docs/CONTRACT.md repeat them):
- a note is a DocumentReference that is not `entered-in-error` and whose `docStatus`, when
  given, is `final` or `amended` (a preliminary note is not finished yet);
- its clinician is its first `author` that is a Practitioner (or PractitionerRole), as
  "Practitioner/id"; with the issuer that is the identity used everywhere in the app;
- its week is the ISO 8601 week of `DocumentReference.date` in UTC ("2026-W41");
- completion lag = `date` − the `period.end` of the Encounter in `context.encounter`, in
  hours (negative when the note is dated before the encounter ended);
- length = the characters of the first attachment whose text is inline (`data`, a text/*
  content type), else that attachment's `size` (bytes).
Only counts and medians leave this module: no note text, no patient or encounter id.
The text is decoded to count its characters and dropped at once.
"""

from __future__ import annotations

import base64
import binascii
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from smartapp.identity import normalize_fhir_user

_AUTHOR_TYPES = ("Practitioner", "PractitionerRole")
_FINISHED_DOC_STATUSES = frozenset({"final", "amended"})


@dataclass(frozen=True, kw_only=True)
class ClinicianWeek:
    """One clinician's notes in one ISO week: what is stored."""

    fhir_user: str
    week: str
    week_start: date
    notes: int
    notes_with_lag: int
    median_lag_hours: float | None
    notes_with_length: int
    median_note_chars: float | None


@dataclass
class _Accumulator:
    notes: int = 0
    lags: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)


@dataclass
class BaselineAggregator:
    """Feed it Encounters (first) and DocumentReferences; `weeks()` gives the aggregates.

    Encounters are held only as id → end time while the run lasts.
    """

    since: datetime | None = None
    _encounter_end: dict[str, datetime] = field(default_factory=dict)
    _weeks: dict[tuple[str, str], _Accumulator] = field(
        default_factory=lambda: defaultdict(_Accumulator)
    )
    #: Why notes were left out, by reason (counts only).
    skipped: Counter[str] = field(default_factory=Counter)
    encounters_read: int = 0
    notes_read: int = 0

    def add_encounter(self, resource: Mapping[str, Any]) -> None:
        self.encounters_read += 1
        end = parse_instant(_get(resource, "period", "end"))
        rid = resource.get("id")
        if isinstance(rid, str) and end is not None:
            self._encounter_end[rid] = end

    def add_note(self, resource: Mapping[str, Any]) -> None:
        self.notes_read += 1
        reason = self._skip_reason(resource)
        if reason:
            self.skipped[reason] += 1
            return
        written = parse_instant(resource.get("date"))
        author = note_author(resource)
        assert written is not None and author is not None  # checked by _skip_reason
        acc = self._weeks[(author, iso_week(written))]
        acc.notes += 1
        end = self._encounter_end.get(_encounter_id(resource) or "")
        if end is not None:
            acc.lags.append((written - end).total_seconds() / 3600.0)
        length = note_length(resource)
        if length is not None:
            acc.lengths.append(length)

    def add(self, resource: Mapping[str, Any]) -> None:
        rtype = resource.get("resourceType")
        if rtype == "Encounter":
            self.add_encounter(resource)
        elif rtype == "DocumentReference":
            self.add_note(resource)

    def _skip_reason(self, resource: Mapping[str, Any]) -> str | None:
        if resource.get("status") == "entered-in-error":
            return "entered_in_error"
        doc_status = resource.get("docStatus")
        if doc_status is not None and doc_status not in _FINISHED_DOC_STATUSES:
            return "not_final"
        written = parse_instant(resource.get("date"))
        if written is None:
            return "undated"
        if self.since is not None and written < self.since:
            return "before_since"
        if note_author(resource) is None:
            return "no_practitioner_author"
        return None

    def weeks(self) -> list[ClinicianWeek]:
        out = []
        for (author, week), acc in sorted(self._weeks.items()):
            out.append(
                ClinicianWeek(
                    fhir_user=author,
                    week=week,
                    week_start=week_start(week),
                    notes=acc.notes,
                    notes_with_lag=len(acc.lags),
                    median_lag_hours=_median(acc.lags),
                    notes_with_length=len(acc.lengths),
                    median_note_chars=_median([float(n) for n in acc.lengths]),
                )
            )
        return out


def aggregate(
    resources: Iterable[Mapping[str, Any]], *, since: datetime | None = None
) -> list[ClinicianWeek]:
    """Encounters must come before the notes that point at them (sort them first)."""
    aggregator = BaselineAggregator(since=since)
    for resource in sorted(resources, key=lambda r: r.get("resourceType") != "Encounter"):
        aggregator.add(resource)
    return aggregator.weeks()


def note_author(resource: Mapping[str, Any]) -> str | None:
    for author in resource.get("author") or []:
        reference = author.get("reference") if isinstance(author, dict) else None
        user = normalize_fhir_user(reference) if isinstance(reference, str) else None
        if user is not None and user.split("/", 1)[0] in _AUTHOR_TYPES:
            return user
    return None


def note_length(resource: Mapping[str, Any]) -> int | None:
    sized: int | None = None
    for content in resource.get("content") or []:
        attachment = content.get("attachment") if isinstance(content, dict) else None
        if not isinstance(attachment, dict):
            continue
        text = _inline_text(attachment)
        if text is not None:
            return len(text)
        size = attachment.get("size")
        if sized is None and isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            sized = size
    return sized


def _inline_text(attachment: Mapping[str, Any]) -> str | None:
    data = attachment.get("data")
    content_type = str(attachment.get("contentType") or "text/plain").lower()
    if not isinstance(data, str) or not content_type.startswith("text/"):
        return None
    try:
        return base64.b64decode(data, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return None


def _encounter_id(resource: Mapping[str, Any]) -> str | None:
    context = resource.get("context")
    encounters = context.get("encounter") if isinstance(context, dict) else None
    for item in encounters if isinstance(encounters, list) else []:
        reference = item.get("reference") if isinstance(item, dict) else None
        if isinstance(reference, str) and "Encounter/" in reference:
            return reference.rsplit("Encounter/", 1)[1].split("/", 1)[0]
    return None


def parse_instant(value: Any) -> datetime | None:
    """A FHIR dateTime/instant as an aware UTC datetime; a bare date is its midnight UTC."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        parsed = (
            datetime.fromisoformat(text)
            if len(text) > 10
            else datetime.fromisoformat(text + "T00:00:00")
        )
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def iso_week(when: datetime) -> str:
    year, week, _ = when.astimezone(UTC).isocalendar()
    return f"{year}-W{week:02d}"


def week_start(week: str) -> date:
    """The Monday of an ISO week key ("2026-W41")."""
    year, number = week.split("-W")
    return date.fromisocalendar(int(year), int(number), 1)


def week_end(week: str) -> date:
    return week_start(week) + timedelta(days=7)


def _get(resource: Mapping[str, Any], *path: str) -> Any:
    node: Any = resource
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None
