"""Which parts of the chart read were incomplete, told on each card that draws on them.

A search that stopped at the page cap (`truncated`) or failed part-way (`search_failed`)
leaves a card's statements drawn from part of the chart. Each card names the types it
used that were cut short, and whether the latest values are among those read (the
search went newest first) or may not be.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.kinds import KIND_SOURCES

_CUT_SHORT = frozenset({"truncated", "search_failed"})


def chart_incomplete(
    snapshot: ChartSnapshot, kind: str, cited: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """`[{"resourceType", "code", "detail", "latestRead"}]` for the kind's types (and the
    types its citations name) whose read was cut short. `latestRead`: the newest of the
    type were read (a truncation of a newest-first search), else false."""
    types = set(KIND_SOURCES.get(kind, ())) | {ref.split("/", 1)[0] for ref in cited}
    out: list[dict[str, Any]] = []
    for problem in snapshot.problems:
        if problem.code not in _CUT_SHORT or problem.resource_type not in types:
            continue
        out.append(
            {
                "resourceType": problem.resource_type,
                "code": problem.code,
                "detail": problem.detail,
                "latestRead": problem.code == "truncated" and problem.newest_first is True,
            }
        )
    return out
