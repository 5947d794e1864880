"""Before vs after go-live, for clinicians who use the app and those who do not, from the
stored EHR baseline (`smartapp.baseline`): the `baseline` section of `/admin/api/metrics`.

Definitions (docs/CONTRACT.md repeats them):
- app users: identities (issuer, fhirUser) with a decision or a saved note in the app;
  everyone else in the baseline is a non-user;
- before: ISO weeks that end on or before the go-live day; after: weeks that start on or
  after it; the week the go-live falls in is left out (it is neither);
- a clinician's value in a period is the median of their weekly medians, weighted by the
  notes behind each (a week of 7 notes counts 7 times);
- a group's value is the median over its clinicians; its 95 % interval is a percentile
  bootstrap over clinicians (2,000 resamples with replacement, fixed seed, so the page and
  the API agree), none with fewer than two clinicians;
- change: the median of each clinician's after − before (clinicians with both), same
  bootstrap. Lag in hours, length in characters.
https://en.wikipedia.org/wiki/Bootstrapping_(statistics)#Deriving_confidence_intervals_from_the_bootstrap_distribution
"""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from smartapp.baseline.models import BaselineRun, BaselineWeek
from smartapp.feedback.models import Decision, ShownSuggestion
from smartapp.notes.models import SavedNote

RESAMPLES = 2000
SEED = 12
MEASURES = ("lag_hours", "note_chars")
GROUPS = ("app_users", "non_users")
PERIODS = ("before", "after")


@dataclass(frozen=True)
class _ClinicianPeriod:
    notes: int
    lag_hours: float | None
    note_chars: float | None


def app_users(s: Session, issuer: str) -> set[str]:
    """fhirUsers at `issuer` with a decision or a saved note in the app."""
    decided = s.scalars(
        select(ShownSuggestion.fhir_user)
        .join(Decision, Decision.suggestion_id == ShownSuggestion.id)
        .where(ShownSuggestion.site == issuer, ShownSuggestion.fhir_user.is_not(None))
        .distinct()
    )
    noted = s.scalars(
        select(SavedNote.fhir_user)
        .where(SavedNote.site == issuer, SavedNote.fhir_user.is_not(None))
        .distinct()
    )
    return {u for u in [*decided, *noted] if u}


def period_of(week_start: date, go_live: date | None) -> str | None:
    if go_live is None:
        return "before"
    if week_start + timedelta(days=7) <= go_live:
        return "before"
    if week_start >= go_live:
        return "after"
    return None  # the go-live week


def baseline_summary(s: Session, *, resamples: int = RESAMPLES) -> dict[str, Any]:
    """The `baseline` section: one entry per issuer with a stored baseline."""
    sites = []
    issuers = sorted(set(s.scalars(select(BaselineWeek.issuer).distinct())))
    for issuer in issuers:
        run = s.scalars(
            select(BaselineRun)
            .where(BaselineRun.issuer == issuer)
            .order_by(BaselineRun.finished_at.desc())
            .limit(1)
        ).first()
        go_live = run.go_live if run else None
        users = app_users(s, issuer)
        weeks = s.scalars(select(BaselineWeek).where(BaselineWeek.issuer == issuer)).all()
        per: dict[tuple[str, str], list[BaselineWeek]] = defaultdict(list)
        for week in weeks:
            period = period_of(week.week_start, go_live)
            if period is not None:
                per[(week.fhir_user, period)].append(week)
        clinicians = {w.fhir_user for w in weeks}
        groups = []
        for group in GROUPS:
            members = sorted(c for c in clinicians if (c in users) == (group == "app_users"))
            values = {
                period: {c: _clinician(per[(c, period)]) for c in members if per.get((c, period))}
                for period in PERIODS
            }
            groups.append(
                {
                    "group": group,
                    "clinicians": len(members),
                    **{p: _period_json(values[p], resamples) for p in PERIODS},
                    "change": _change_json(values["before"], values["after"], resamples),
                }
            )
        sites.append(
            {
                "issuer": issuer,
                "goLive": go_live.isoformat() if go_live else None,
                "lastRun": run.finished_at.isoformat() if run else None,
                "weeks": len({w.week for w in weeks}),
                "groups": groups,
            }
        )
    return {
        "interval": f"95% percentile bootstrap over clinicians ({resamples} resamples)",
        "sites": sites,
    }


def _clinician(weeks: Sequence[BaselineWeek]) -> _ClinicianPeriod:
    return _ClinicianPeriod(
        notes=sum(w.notes for w in weeks),
        lag_hours=_weighted_median(
            [
                (w.median_lag_hours, w.notes_with_lag)
                for w in weeks
                if w.median_lag_hours is not None
            ]
        ),
        note_chars=_weighted_median(
            [
                (w.median_note_chars, w.notes_with_length)
                for w in weeks
                if w.median_note_chars is not None
            ]
        ),
    )


def _period_json(values: dict[str, _ClinicianPeriod], resamples: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "clinicians": len(values),
        "notes": sum(v.notes for v in values.values()),
    }
    for measure in MEASURES:
        sample = [getattr(v, measure) for v in values.values() if getattr(v, measure) is not None]
        out[f"median_{measure}"] = _round(statistics.median(sample)) if sample else None
        out[f"{measure}_ci95"] = bootstrap_ci(sample, resamples=resamples)
    return out


def _change_json(
    before: dict[str, _ClinicianPeriod], after: dict[str, _ClinicianPeriod], resamples: int
) -> dict[str, Any]:
    out: dict[str, Any] = {"clinicians": len(before.keys() & after.keys())}
    for measure in MEASURES:
        differences = [
            getattr(after[c], measure) - getattr(before[c], measure)
            for c in sorted(before.keys() & after.keys())
            if getattr(after[c], measure) is not None and getattr(before[c], measure) is not None
        ]
        out[f"median_{measure}"] = _round(statistics.median(differences)) if differences else None
        out[f"{measure}_ci95"] = bootstrap_ci(differences, resamples=resamples)
    return out


def bootstrap_ci(
    values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED
) -> list[float] | None:
    """The 2.5th and 97.5th percentiles of the median over resamples; None below 2 values."""
    if len(values) < 2:
        return None
    rng = random.Random(seed)
    medians = sorted(
        statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples)
    )
    low = medians[int(0.025 * (resamples - 1))]
    high = medians[int(round(0.975 * (resamples - 1)))]
    return [_round(low), _round(high)]


def _weighted_median(pairs: Sequence[tuple[float, int]]) -> float | None:
    expanded = sorted((value, weight) for value, weight in pairs if weight > 0)
    total = sum(weight for _, weight in expanded)
    if total == 0:
        return None
    # The lower and upper middle positions, as statistics.median does for an even count.
    positions = ((total - 1) // 2, total // 2)
    picked = []
    for position in positions:
        seen = 0
        for value, weight in expanded:
            seen += weight
            if seen > position:
                picked.append(value)
                break
    return (picked[0] + picked[1]) / 2


def _round(value: float) -> float:
    return round(float(value), 2)
