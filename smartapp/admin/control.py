"""The concurrent control of a phased rollout: notes of clinicians inside vs outside it.

A partial rollout (a share strictly between 0 and 100 %) places each clinician by the one
placement hash (`smartapp.placement`), which is as good as a random assignment made per
clinician. Each saved note records the clinician's arm in every kind's partial rollout at
that site (`saved_note.rollout_arms`, written from `notes.drafting`); this module compares
the two arms per (site, kind) over the notes saved in [from, to): the `rollout_control`
section of `/admin/api/metrics`.

Definitions (docs/CONTRACT.md repeats them):
- only clinical notes with a fhirUser and a recorded arm for the kind count (notes saved
  before arms were recorded, or without a partial rollout of the kind, are in neither arm);
- `median_seconds_launch_to_note`: the median over the arm's notes (launch to first save);
- `edits_per_note`: the arm's edited suggestion lines ÷ its notes;
- the note's composition, as `/admin/api/metrics` pools it: `accepted_share_of_note_chars`,
  `edited_share_of_note_chars` and `typed_share_of_note_chars` (0–1), the arm's characters
  from accepted suggestions, from edited ones, and typed by the clinician (what no
  suggestion supplied) ÷ all its notes' characters; None when its notes recorded none;
- `difference`: inside − outside, for every measure.

Interval: a 95 % percentile bootstrap that resamples *clinicians* (with replacement, each
arm on its own, 1,000 resamples, fixed seed so the page and the API agree). Clinicians,
not notes, are resampled because the hash assigns clinicians: one clinician's notes are
alike (their pace, their habits), so treating notes as independent would make the interval
too narrow; and a median has no simple analytic standard error. None with fewer than two
clinicians in an arm (in either arm, for the difference).
https://en.wikipedia.org/wiki/Bootstrapping_(statistics)#Cluster_data

The bootstrap is the cost (about 1.5-2 s for six groups of 120 clinicians), the read of
the notes is not: each group's comparison is kept, per process, keyed by the group's data
itself (every clinician's notes in each arm), so a request repeats only the read, and a
saved note invalidates exactly the group it joins, in every process, with no version to
keep in step.
"""

from __future__ import annotations

import copy
import random
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from smartapp.admin.metrics import aware
from smartapp.notes.models import CLINICAL_NOTE, SavedNote
from smartapp.placement import INSIDE, OUTSIDE

RESAMPLES = 1000
SEED = 12
ARMS = (INSIDE, OUTSIDE)


def interval_name(resamples: int = RESAMPLES) -> str:
    return f"95% percentile bootstrap over clinicians ({resamples} resamples, each arm)"


@dataclass(frozen=True)
class _Clinician:
    """One clinician's notes in one arm."""

    seconds: tuple[float, ...]
    notes: int
    edits: int
    #: Their notes' characters: all, from accepted suggestions, from edited ones.
    chars_total: int = 0
    chars_accepted: int = 0
    chars_edited: int = 0


class _Note(NamedTuple):
    seconds: float | None
    edits: int
    chars_total: int
    chars_accepted: int
    chars_edited: int


@dataclass(frozen=True, kw_only=True)
class ArmStats:
    clinicians: int
    notes: int
    median_seconds_launch_to_note: float | None
    edits_per_note: float | None
    accepted_share_of_note_chars: float | None
    edited_share_of_note_chars: float | None
    typed_share_of_note_chars: float | None


def _stats(clinicians: Sequence[_Clinician]) -> ArmStats:
    seconds = [s for c in clinicians for s in c.seconds]
    notes = sum(c.notes for c in clinicians)
    total = sum(c.chars_total for c in clinicians)
    accepted = sum(c.chars_accepted for c in clinicians)
    edited = sum(c.chars_edited for c in clinicians)

    def share(chars: int) -> float | None:
        return chars / total if total else None

    return ArmStats(
        clinicians=len(clinicians),
        notes=notes,
        median_seconds_launch_to_note=float(statistics.median(seconds)) if seconds else None,
        edits_per_note=sum(c.edits for c in clinicians) / notes if notes else None,
        accepted_share_of_note_chars=share(accepted),
        edited_share_of_note_chars=share(edited),
        # Never below 0 (counts from an older composer), as in admin.metrics.
        typed_share_of_note_chars=share(max(0, total - accepted - edited)),
    )


def _interval(values: list[float], digits: int = 2) -> list[float] | None:
    """The 2.5th and 97.5th percentiles of bootstrap replicates (as smartapp.admin.baseline)."""
    if not values:
        return None
    values.sort()
    n = len(values)
    low, high = values[int(0.025 * (n - 1))], values[int(round(0.975 * (n - 1)))]
    return [_round(low, digits), _round(high, digits)]


def _round(value: float, digits: int = 2) -> float:
    return round(float(value), digits)


MEASURES = (
    "median_seconds_launch_to_note",
    "edits_per_note",
    "accepted_share_of_note_chars",
    "edited_share_of_note_chars",
    "typed_share_of_note_chars",
)
#: Shares (0–1) keep 4 digits, as a percentage with two decimals; the rest keep 2.
_SHARES = frozenset(m for m in MEASURES if m.endswith("_share_of_note_chars"))


def compare_arms(
    inside: Sequence[_Clinician],
    outside: Sequence[_Clinician],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, Any]:
    """Both arms' measures with their intervals, and inside − outside with its interval."""
    arms = {INSIDE: list(inside), OUTSIDE: list(outside)}
    point = {arm: _stats(members) for arm, members in arms.items()}
    replicates: dict[tuple[str, str], list[float]] = defaultdict(list)
    rng = random.Random(seed)
    for _ in range(resamples):
        drawn = {
            arm: _stats(rng.choices(members, k=len(members))) if len(members) >= 2 else None
            for arm, members in arms.items()
        }
        for measure in MEASURES:
            values: dict[str, float | None] = {
                arm: getattr(stats, measure) if stats is not None else None
                for arm, stats in drawn.items()
            }
            for arm, value in values.items():
                if value is not None:
                    replicates[(arm, measure)].append(value)
            a, b = values[INSIDE], values[OUTSIDE]
            if a is not None and b is not None:
                replicates[("difference", measure)].append(a - b)
    out: dict[str, Any] = {}
    for arm in ARMS:
        stats = point[arm]
        out[arm] = {
            "clinicians": stats.clinicians,
            "notes": stats.notes,
            **{
                key: value
                for measure in MEASURES
                for key, value in (
                    (measure, _maybe_round(getattr(stats, measure), _digits(measure))),
                    (f"{measure}_ci95", _interval(replicates[(arm, measure)], _digits(measure))),
                )
            },
        }
    difference: dict[str, Any] = {}
    for measure in MEASURES:
        a, b = getattr(point[INSIDE], measure), getattr(point[OUTSIDE], measure)
        digits = _digits(measure)
        difference[measure] = (
            _maybe_round(a - b, digits) if a is not None and b is not None else None
        )
        difference[f"{measure}_ci95"] = _interval(replicates[("difference", measure)], digits)
    out["difference"] = difference
    return out


#: Comparisons kept per process: a dashboard shows a few periods of a few dozen groups.
CACHED_COMPARISONS = 512


@lru_cache(maxsize=CACHED_COMPARISONS)
def _cached_comparison(
    inside: tuple[_Clinician, ...], outside: tuple[_Clinician, ...], resamples: int, seed: int
) -> dict[str, Any]:
    return compare_arms(inside, outside, resamples=resamples, seed=seed)


def cached_compare_arms(
    inside: Sequence[_Clinician],
    outside: Sequence[_Clinician],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, Any]:
    """`compare_arms`, computed once per distinct data (a copy: callers may change it)."""
    return copy.deepcopy(_cached_comparison(tuple(inside), tuple(outside), resamples, seed))


def _digits(measure: str) -> int:
    return 4 if measure in _SHARES else 2


def _maybe_round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else _round(value, digits)


def rollout_control(
    session: Session,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    resamples: int = RESAMPLES,
) -> dict[str, Any]:
    """The `rollout_control` section: one group per (site, kind) with notes in an arm."""
    stmt = select(
        SavedNote.site,
        SavedNote.fhir_user,
        SavedNote.created_at,
        SavedNote.launched_at,
        SavedNote.edits,
        SavedNote.chars_total,
        SavedNote.chars_accepted,
        SavedNote.chars_edited,
        SavedNote.rollout_arms,
    ).where(
        SavedNote.document_kind == CLINICAL_NOTE,
        SavedNote.fhir_user.is_not(None),
        SavedNote.rollout_arms.is_not(None),
    )
    if start is not None:
        stmt = stmt.where(SavedNote.created_at >= start)
    if end is not None:
        stmt = stmt.where(SavedNote.created_at < end)
    # (site, kind) -> arm -> fhirUser -> [_Note]
    notes: dict[tuple[str, str], dict[str, dict[str, list[_Note]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for row in session.execute(stmt):
        site, fhir_user, created_at, launched_at, edits, total, accepted, edited, arms = row
        assert fhir_user is not None  # the query keeps only notes with one
        seconds = (aware(created_at) - aware(launched_at)).total_seconds() if launched_at else None
        note = _Note(seconds, edits or 0, total or 0, accepted or 0, edited or 0)
        for kind, arm in (arms or {}).items():
            if arm in ARMS:
                notes[(site, kind)][arm][fhir_user].append(note)
    groups = []
    for site, kind in sorted(notes):
        by_arm = notes[(site, kind)]
        clinicians = {
            arm: [
                _Clinician(
                    seconds=tuple(n.seconds for n in rows if n.seconds is not None),
                    notes=len(rows),
                    edits=sum(n.edits for n in rows),
                    chars_total=sum(n.chars_total for n in rows),
                    chars_accepted=sum(n.chars_accepted for n in rows),
                    chars_edited=sum(n.chars_edited for n in rows),
                )
                for _, rows in sorted(by_arm.get(arm, {}).items())
            ]
            for arm in ARMS
        }
        groups.append(
            {
                "site": site,
                "kind": kind,
                **cached_compare_arms(clinicians[INSIDE], clinicians[OUTSIDE], resamples=resamples),
            }
        )
    return {"interval": interval_name(resamples), "groups": groups}
