"""Governance metrics from the feedback records: what was shown, and what clinicians decided.

Definitions (the README repeats them):
- a suggestion counts in the period in which it was *shown* (`shown_at` in [from, to));
- its outcome is its *latest* decision (a clinician who accepts and later flags counts
  as flagged); a suggestion with no decision counts as shown only;
- `acceptance_rate` = (accepted + edited) / shown — an edited suggestion was used;
- `median_edit_distance` is over suggestions whose latest decision is an edit (Levenshtein
  characters between the suggested and the final text);
- `median_seconds_to_decision` is over decided suggestions, from shown to latest decision;
- `median_seconds_in_sidebar` is over the period's notes that report it: the seconds the
  sidebar page was visible (Page Visibility API) before the note's saves, summed over its
  saves, at most launch to last save (smartapp.notes.service);
- engine keys are "name version"; week keys are ISO 8601 weeks of `shown_at` in UTC
  ("2026-W47").

The latest decision is chosen in SQL (a window function, on SQLite and PostgreSQL);
grouping and medians are done in Python so that ISO weeks and medians are computed the
same way on every backend. Significance: the two-proportion z-test
(https://www.itl.nist.gov/div898/handbook/prc/section3/prc33.htm).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from smartapp.feedback.models import Decision, ShownSuggestion
from smartapp.notes.models import CLINICAL_NOTE, SavedNote

GroupBy = Literal["kind", "site", "engine", "week"]
GROUP_BYS: tuple[str, ...] = ("kind", "site", "engine", "week")

#: The contract's fields, in the contract's order (also the CSV header).
FIELDS: tuple[str, ...] = (
    "key",
    "shown",
    "accepted",
    "edited",
    "rejected",
    "flagged",
    "acceptance_rate",
    "median_edit_distance",
    "median_seconds_to_decision",
    "notes",
    "median_seconds_launch_to_note",
    "ai_share_of_note_chars",
)

RATE_DIGITS = 4


@dataclass(frozen=True, kw_only=True)
class MetricsGroup:
    key: str
    shown: int
    accepted: int
    edited: int
    rejected: int
    flagged: int
    acceptance_rate: float | None
    median_edit_distance: float | None
    median_seconds_to_decision: float | None
    #: Notes saved in the period that drew on this group (by site and week: every note).
    notes: int = 0
    median_seconds_launch_to_note: float | None = None
    #: The median time the sidebar was visible before the note's saves (notes that report it).
    median_seconds_in_sidebar: float | None = None
    #: Of those notes' characters, the share from accepted or edited suggestions (0–1).
    ai_share_of_note_chars: float | None = None
    #: The same characters apart (0–1 each, summing to 1): from suggestions accepted as
    #: drafted, from suggestions the clinician edited, typed by the clinician.
    accepted_share_of_note_chars: float | None = None
    edited_share_of_note_chars: float | None = None
    typed_share_of_note_chars: float | None = None
    #: Edited suggestion lines per note (`saved_note.edits`), over those notes.
    edits_per_note: float | None = None

    @property
    def decided(self) -> int:
        return self.accepted + self.edited + self.rejected + self.flagged

    @property
    def undecided(self) -> int:
        return self.shown - self.decided

    def rate(self, metric: str) -> float | None:
        """A share of `shown`: "acceptance", "accept", "edit", "rejection", "flag", "undecided"."""
        if not self.shown:
            return None
        return numerator(self, metric) / self.shown

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "shown": self.shown,
            "accepted": self.accepted,
            "edited": self.edited,
            "rejected": self.rejected,
            "flagged": self.flagged,
            "acceptance_rate": _round(self.acceptance_rate),
            "median_edit_distance": self.median_edit_distance,
            "median_seconds_to_decision": _round(self.median_seconds_to_decision, 1),
            "notes": self.notes,
            "median_seconds_launch_to_note": _round(self.median_seconds_launch_to_note, 1),
            "median_seconds_in_sidebar": _round(self.median_seconds_in_sidebar, 1),
            "ai_share_of_note_chars": _round(self.ai_share_of_note_chars),
            "accepted_share_of_note_chars": _round(self.accepted_share_of_note_chars),
            "edited_share_of_note_chars": _round(self.edited_share_of_note_chars),
            "typed_share_of_note_chars": _round(self.typed_share_of_note_chars),
            "edits_per_note": _round(self.edits_per_note),
        }


def numerator(group: MetricsGroup, metric: str) -> int:
    counts = {
        "acceptance": group.accepted + group.edited,
        "accept": group.accepted,
        "edit": group.edited,
        "rejection": group.rejected,
        "flag": group.flagged,
        "undecided": group.undecided,
    }
    if metric not in counts:
        raise ValueError(f"unknown metric {metric!r}")
    return counts[metric]


def _round(value: float | None, digits: int = RATE_DIGITS) -> float | None:
    return None if value is None else round(value, digits)


def week_key(moment: datetime) -> str:
    """The ISO 8601 week of `moment` in UTC, e.g. "2026-W47"."""
    year, week, _ = aware(moment).astimezone(UTC).isocalendar()
    return f"{year}-W{week:02d}"


@dataclass(frozen=True, kw_only=True)
class ShownRow:
    kind: str
    site: str
    engine: str
    shown_at: datetime
    action: str | None
    edit_distance: int | None
    seconds: float | None
    #: For the safety measures (smartapp.admin.safety); None on rows shown before 0017.
    age_band: str | None = None
    sex: str | None = None
    safety_hits: int | None = None
    verification: Mapping[str, int] | None = None


_KEYS: dict[str, Callable[[ShownRow], str]] = {
    "kind": lambda r: r.kind,
    "site": lambda r: r.site,
    "engine": lambda r: r.engine,
    "week": lambda r: week_key(r.shown_at),
    "all": lambda r: "all",
}


def _check_group_by(group_by: str) -> None:
    if group_by not in _KEYS:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BYS)}, not {group_by!r}")


def shown_rows(session: Session, start: datetime | None, end: datetime | None) -> list[ShownRow]:
    ranked = select(
        Decision.suggestion_id,
        Decision.action,
        Decision.edit_distance,
        Decision.seconds_to_decision,
        func.row_number()
        .over(
            partition_by=Decision.suggestion_id,
            order_by=(Decision.decided_at.desc(), Decision.id.desc()),
        )
        .label("rank"),
    ).subquery()
    stmt = select(
        ShownSuggestion.kind,
        ShownSuggestion.site,
        ShownSuggestion.engine_name,
        ShownSuggestion.engine_version,
        ShownSuggestion.shown_at,
        ranked.c.action,
        ranked.c.edit_distance,
        ranked.c.seconds_to_decision,
        ShownSuggestion.age_band,
        ShownSuggestion.sex,
        ShownSuggestion.safety_hits,
        ShownSuggestion.verification,
    ).outerjoin(ranked, and_(ranked.c.suggestion_id == ShownSuggestion.id, ranked.c.rank == 1))
    if start is not None:
        stmt = stmt.where(ShownSuggestion.shown_at >= start)
    if end is not None:
        stmt = stmt.where(ShownSuggestion.shown_at < end)
    return [
        ShownRow(
            kind=kind,
            site=site,
            engine=f"{name} {version}",
            shown_at=aware(shown_at),
            action=action,
            edit_distance=distance,
            seconds=seconds,
            age_band=age_band,
            sex=sex,
            safety_hits=hits,
            verification=verification,
        )
        for (
            kind,
            site,
            name,
            version,
            shown_at,
            action,
            distance,
            seconds,
            age_band,
            sex,
            hits,
            verification,
        ) in session.execute(stmt)
    ]


def aware(moment: datetime) -> datetime:
    """A UTC-aware datetime: columns read through a subquery skip UTCDateTime's repair."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def aggregate(key: str, rows: Iterable[ShownRow]) -> MetricsGroup:
    rows = list(rows)
    actions = [r.action for r in rows]
    accepted, edited = actions.count("accept"), actions.count("edit")
    return MetricsGroup(
        key=key,
        shown=len(rows),
        accepted=accepted,
        edited=edited,
        rejected=actions.count("reject"),
        flagged=actions.count("flag"),
        acceptance_rate=(accepted + edited) / len(rows) if rows else None,
        median_edit_distance=_median(
            [r.edit_distance for r in rows if r.action == "edit" and r.edit_distance is not None]
        ),
        median_seconds_to_decision=_median(
            [r.seconds for r in rows if r.action is not None and r.seconds is not None]
        ),
    )


def compute_metrics(
    session: Session,
    *,
    group_by: str,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[MetricsGroup]:
    """One group per key that had suggestions shown in [start, end), sorted by key.

    `group_by` is kind, site, engine or week ("all" gives one overall group).
    """
    _check_group_by(group_by)
    key_of = _KEYS[group_by]
    buckets: dict[str, list[ShownRow]] = defaultdict(list)
    for row in shown_rows(session, start, end):
        buckets[key_of(row)].append(row)
    notes: dict[str, list[_NoteRow]] = defaultdict(list)
    for note in _note_rows(session, group_by, start, end):
        for key in note.keys:
            notes[key].append(note)
    return [
        _with_notes(aggregate(key, buckets[key]), notes.get(key, []))
        for key in sorted(set(buckets) | {k for k in notes if k != NO_KEY})
    ]


#: The key of notes that drew on no suggestion, when grouping by kind or engine.
NO_KEY = "(none)"


@dataclass(frozen=True, kw_only=True)
class _NoteRow:
    keys: frozenset[str]
    seconds_launch_to_note: float | None
    seconds_in_sidebar: float | None
    chars_total: int
    chars_accepted: int
    chars_edited: int
    edits: int

    @property
    def chars_from_suggestions(self) -> int:
        return self.chars_accepted + self.chars_edited


def _with_notes(group: MetricsGroup, notes: Sequence[_NoteRow]) -> MetricsGroup:
    if not notes:
        return group
    total = sum(n.chars_total for n in notes)
    seconds = [n.seconds_launch_to_note for n in notes if n.seconds_launch_to_note is not None]
    in_sidebar = [n.seconds_in_sidebar for n in notes if n.seconds_in_sidebar is not None]

    def share(chars: int) -> float | None:
        return chars / total if total else None

    accepted = sum(n.chars_accepted for n in notes)
    edited = sum(n.chars_edited for n in notes)
    return replace(
        group,
        notes=len(notes),
        median_seconds_launch_to_note=_median(seconds),
        median_seconds_in_sidebar=_median(in_sidebar),
        ai_share_of_note_chars=share(accepted + edited),
        accepted_share_of_note_chars=share(accepted),
        edited_share_of_note_chars=share(edited),
        # What no suggestion supplied; never below 0 (counts from an older composer).
        typed_share_of_note_chars=share(max(0, total - accepted - edited)),
        edits_per_note=sum(n.edits for n in notes) / len(notes),
    )


def _note_rows(
    session: Session, group_by: str, start: datetime | None, end: datetime | None
) -> list[_NoteRow]:
    """Each note saved in [start, end) with the group keys it counts under."""
    stmt = select(
        SavedNote.site,
        SavedNote.created_at,
        SavedNote.launched_at,
        SavedNote.seconds_in_sidebar,
        SavedNote.engines,
        SavedNote.suggestion_ids,
        SavedNote.chars_total,
        SavedNote.chars_accepted,
        SavedNote.chars_edited,
        SavedNote.edits,
    ).where(SavedNote.document_kind == CLINICAL_NOTE)  # not the patient's summaries
    if start is not None:
        stmt = stmt.where(SavedNote.created_at >= start)
    if end is not None:
        stmt = stmt.where(SavedNote.created_at < end)
    notes = session.execute(stmt).all()
    kinds_of = _kinds_of(session, notes) if group_by == "kind" else {}
    rows = []
    for n in notes:
        created = aware(n.created_at)
        launched = aware(n.launched_at) if n.launched_at else None
        rows.append(
            _NoteRow(
                keys=frozenset(
                    _note_keys(group_by, n.site, created, n.engines, n.suggestion_ids, kinds_of)
                ),
                seconds_launch_to_note=((created - launched).total_seconds() if launched else None),
                seconds_in_sidebar=n.seconds_in_sidebar,
                chars_total=n.chars_total or 0,
                chars_accepted=n.chars_accepted or 0,
                chars_edited=n.chars_edited or 0,
                edits=n.edits or 0,
            )
        )
    return rows


def _kinds_of(session: Session, notes: Sequence[Any]) -> dict[str, str]:
    kinds_of: dict[str, str] = {}
    ids = sorted({i for n in notes for i in (n.suggestion_ids or [])})
    for chunk_start in range(0, len(ids), 500):
        chunk = ids[chunk_start : chunk_start + 500]
        for sid, kind in session.execute(
            select(ShownSuggestion.id, ShownSuggestion.kind).where(ShownSuggestion.id.in_(chunk))
        ):
            kinds_of[sid] = kind
    return kinds_of


def _note_keys(
    group_by: str,
    site: str,
    created_at: datetime,
    engines: Sequence[Sequence[str]] | None,
    suggestion_ids: Sequence[str] | None,
    kinds_of: Mapping[str, str],
) -> set[str]:
    """The keys a note counts under: once under each kind and engine it drew on."""
    if group_by == "site":
        return {site}
    if group_by == "week":
        return {week_key(aware(created_at))}
    if group_by == "engine":
        return {f"{e[0]} {e[1]}" for e in (engines or []) if len(e) >= 2} or {NO_KEY}
    if group_by == "kind":
        return {kinds_of[i] for i in (suggestion_ids or []) if i in kinds_of} or {NO_KEY}
    return {"all"}


# --- notes written ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NotesGroup:
    key: str
    #: Notes the clinicians saved (whatever became of the write-back).
    saved: int
    #: Of those, notes the EHR holds (DocumentReference written).
    in_chart: int

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "saved": self.saved, "in_chart": self.in_chart}


def notes_written(
    session: Session,
    *,
    group_by: str,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[NotesGroup]:
    """Notes saved in [start, end) per key. A note counts once under each kind and each
    engine it drew suggestions from; a note typed without suggestions counts under
    "(none)" for kind and engine."""
    _check_group_by(group_by)
    stmt = select(
        SavedNote.site,
        SavedNote.created_at,
        SavedNote.status,
        SavedNote.engines,
        SavedNote.suggestion_ids,
    ).where(SavedNote.document_kind == CLINICAL_NOTE)  # not the patient's summaries
    if start is not None:
        stmt = stmt.where(SavedNote.created_at >= start)
    if end is not None:
        stmt = stmt.where(SavedNote.created_at < end)
    notes = session.execute(stmt).all()

    kinds_of = _kinds_of(session, notes) if group_by == "kind" else {}
    saved: dict[str, int] = defaultdict(int)
    in_chart: dict[str, int] = defaultdict(int)
    for site, created_at, status, engines, suggestion_ids in notes:
        keys = _note_keys(group_by, site, created_at, engines, suggestion_ids, kinds_of)
        for key in keys:
            saved[key] += 1
            if status == "in_chart":
                in_chart[key] += 1
    return [NotesGroup(key=k, saved=saved[k], in_chart=in_chart[k]) for k in sorted(saved)]


# --- statistics ------------------------------------------------------------------------


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> float | None:
    """z for H0: p1 == p2, with the pooled proportion. None when undefined (an empty side)."""
    if n1 <= 0 or n2 <= 0:
        return None
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0
    return (p1 - p2) / se


@dataclass(frozen=True, kw_only=True)
class PeriodComparison:
    key: str
    before: MetricsGroup | None
    after: MetricsGroup | None
    #: after.acceptance_rate - before.acceptance_rate, when both periods have data.
    change: float | None
    z: float | None
    significant: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "before": self.before.to_json() if self.before else None,
            "after": self.after.to_json() if self.after else None,
            "change": _round(self.change),
            "z": _round(self.z, 2),
            "significant": self.significant,
        }


def compare_periods(
    session: Session,
    *,
    pivot: datetime,
    group_by: str = "kind",
    window: timedelta | None = None,
    z_critical: float = 1.96,
) -> list[PeriodComparison]:
    """Acceptance before [pivot - window, pivot) and after [pivot, pivot + window) a rollout
    date; without a window, all of time on each side. A change is significant when the
    two-proportion z-test gives |z| > z_critical."""
    before = {
        g.key: g
        for g in compute_metrics(
            session, group_by=group_by, start=pivot - window if window else None, end=pivot
        )
    }
    after = {
        g.key: g
        for g in compute_metrics(
            session, group_by=group_by, start=pivot, end=pivot + window if window else None
        )
    }
    out: list[PeriodComparison] = []
    for key in sorted(set(before) | set(after)):
        b, a = before.get(key), after.get(key)
        z = None
        change = None
        if a is not None and b is not None:
            z = two_proportion_z(
                numerator(a, "acceptance"), a.shown, numerator(b, "acceptance"), b.shown
            )
            change = (a.acceptance_rate or 0.0) - (b.acceptance_rate or 0.0)
        out.append(
            PeriodComparison(
                key=key,
                before=b,
                after=a,
                change=change,
                z=z,
                significant=z is not None and abs(z) > z_critical,
            )
        )
    return out


@dataclass(frozen=True, kw_only=True)
class SiteVariance:
    key: str
    metric: str
    shown: int
    rate: float | None
    #: The same rate over every other site pooled.
    rest_rate: float | None
    z: float | None
    outlier: bool
    #: Why a site is not tested: too few suggestions shown here or elsewhere.
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "metric": self.metric,
            "shown": self.shown,
            "rate": _round(self.rate),
            "rest_rate": _round(self.rest_rate),
            "z": _round(self.z, 2),
            "outlier": self.outlier,
            "note": self.note,
        }


def site_variance(
    groups: Sequence[MetricsGroup],
    *,
    metric: str = "acceptance",
    min_shown: int = 30,
    z_critical: float = 1.96,
) -> list[SiteVariance]:
    """Each site against the pooled rest: an outlier when |z| > z_critical and both sides
    have at least `min_shown` suggestions shown (a small sample is noted, never flagged).

    `groups` are per-site metrics (`compute_metrics(..., group_by="site")`).
    """
    total_n = sum(g.shown for g in groups)
    total_x = sum(numerator(g, metric) for g in groups)
    out: list[SiteVariance] = []
    for g in groups:
        x, n = numerator(g, metric), g.shown
        rest_x, rest_n = total_x - x, total_n - n
        z = two_proportion_z(x, n, rest_x, rest_n)
        note = None
        if n < min_shown:
            note = f"fewer than {min_shown} shown at this site"
        elif rest_n < min_shown:
            note = f"fewer than {min_shown} shown at the other sites"
        out.append(
            SiteVariance(
                key=g.key,
                metric=metric,
                shown=n,
                rate=x / n if n else None,
                rest_rate=rest_x / rest_n if rest_n else None,
                z=z,
                outlier=note is None and z is not None and abs(z) > z_critical,
                note=note,
            )
        )
    return out


# --- the clinician pulse -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PulseGroup:
    key: str
    asked: int
    answered: int
    skipped: int
    #: Means over answered pulses, 1–5: "Did this draft save you time?" (higher: more time
    #: saved) and "How much checking did it need?" (higher: more checking).
    mean_saved_time: float | None
    mean_checking: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "asked": self.asked,
            "answered": self.answered,
            "skipped": self.skipped,
            "mean_saved_time": _round(self.mean_saved_time, 2),
            "mean_checking": _round(self.mean_checking, 2),
        }


def pulse_summary(
    session: Session,
    *,
    group_by: str,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[PulseGroup]:
    """Pulses asked in [start, end), by site, week or "all"."""
    from smartapp.notes.pulse import PulseResponse

    if group_by not in ("site", "week", "all"):
        raise ValueError("group_by must be site, week or all for the pulse")
    stmt = select(PulseResponse)
    if start is not None:
        stmt = stmt.where(PulseResponse.asked_at >= start)
    if end is not None:
        stmt = stmt.where(PulseResponse.asked_at < end)
    buckets: dict[str, list[Any]] = defaultdict(list)
    for row in session.scalars(stmt):
        key = {"site": row.site, "week": week_key(aware(row.asked_at)), "all": "all"}[group_by]
        buckets[key].append(row)

    def mean(values: list[int]) -> float | None:
        return statistics.fmean(values) if values else None

    groups = []
    for key in sorted(buckets):
        rows = buckets[key]
        answered = [r for r in rows if r.answered_at is not None and not r.skipped]
        groups.append(
            PulseGroup(
                key=key,
                asked=len(rows),
                answered=len(answered),
                skipped=sum(1 for r in rows if r.skipped),
                mean_saved_time=mean([r.saved_time for r in answered if r.saved_time]),
                mean_checking=mean([r.checking for r in answered if r.checking]),
            )
        )
    return groups
