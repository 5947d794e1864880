"""Safety next to adoption: flag rate, statements dropped or shown unverified, and
medication safety-check hits, by site, kind, engine, patient age band and sex.

The `safety` section of `/admin/api/metrics`. Counted over the suggestions *shown* in
[from, to), each by its latest decision, as `smartapp.admin.metrics` counts them:
- `flag_rate` = flagged ÷ shown;
- `statements_checked`, `statements_dropped`, `statements_unverified`: the grounding
  verifier's counts on the suggestions shown (dropped: left out of the card; unverified:
  shown marked [unverified]);
- `safety_hits`: statements that are medication safety-check hits (a rule of
  clinical/data/medication_safety.toml); `with_safety_hits`: suggestions holding one;
- for age band and sex (fairness in local data): the band and administrative sex stored
  when the suggestion was first shown (`smartapp.feedback.demographics`); rows shown before
  they were recorded count under "not recorded". Each group's flag rate is tested against
  all the others pooled (two-proportion z-test, as the site variance is), only with at least
  `min_shown` suggestions on each side.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from smartapp.admin.metrics import ShownRow, shown_rows, two_proportion_z

NOT_RECORDED = "not recorded"
SAFETY_BYS: tuple[str, ...] = ("age_band", "sex", "site", "kind", "engine")

_KEYS: dict[str, Callable[[ShownRow], str]] = {
    "age_band": lambda r: r.age_band or NOT_RECORDED,
    "sex": lambda r: r.sex or NOT_RECORDED,
    "site": lambda r: r.site,
    "kind": lambda r: r.kind,
    "engine": lambda r: r.engine,
}


def _group(key: str, rows: Sequence[ShownRow]) -> dict[str, Any]:
    def counted(name: str) -> int:
        return sum(int((r.verification or {}).get(name, 0) or 0) for r in rows)

    flagged = sum(1 for r in rows if r.action == "flag")
    recorded = [r.safety_hits for r in rows if r.safety_hits is not None]
    return {
        "key": key,
        "shown": len(rows),
        "flagged": flagged,
        "flag_rate": round(flagged / len(rows), 4) if rows else None,
        "statements_checked": counted("checked"),
        "statements_dropped": counted("dropped"),
        "statements_unverified": counted("unverifiedShown"),
        # None when no row of the group recorded its hits (shown before 0017).
        "safety_hits": sum(recorded) if recorded else None,
        "with_safety_hits": sum(1 for h in recorded if h) if recorded else None,
    }


def _with_tests(groups: list[dict[str, Any]], *, min_shown: int) -> list[dict[str, Any]]:
    """Each group's flag rate against the pooled rest (z, and whether it stands out)."""
    total_n = sum(g["shown"] for g in groups)
    total_x = sum(g["flagged"] for g in groups)
    for g in groups:
        rest_n, rest_x = total_n - g["shown"], total_x - g["flagged"]
        tested = g["shown"] >= min_shown and rest_n >= min_shown
        z = two_proportion_z(g["flagged"], g["shown"], rest_x, rest_n) if tested else None
        g["flag_rate_rest"] = round(rest_x / rest_n, 4) if rest_n else None
        g["flag_z"] = None if z is None else round(z, 2)
        g["flag_outlier"] = z is not None and abs(z) > 1.96
    return groups


def safety_summary(
    session: Session,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    min_shown: int = 30,
) -> dict[str, Any]:
    """The `safety` section: {by: [groups]} for each of SAFETY_BYS."""
    rows = shown_rows(session, start, end)
    out: dict[str, Any] = {"min_shown": min_shown}
    for by in SAFETY_BYS:
        buckets: dict[str, list[ShownRow]] = defaultdict(list)
        for row in rows:
            buckets[_KEYS[by](row)].append(row)
        groups = [_group(key, buckets[key]) for key in sorted(buckets)]
        out[by] = _with_tests(groups, min_shown=min_shown)
    return out
