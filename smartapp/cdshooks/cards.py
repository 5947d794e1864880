"""The one card the service answers: what the assistant has ready, and a link to open it.

https://cds-hooks.hl7.org/2.0/#card-attributes and https://cds-hooks.hl7.org/2.0/#link
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: CDS Hooks 2.0: "summary … SHOULD be less than 140 characters".
MAX_SUMMARY = 139
SOURCE_LABEL = "smartapp documentation assistant"


@dataclass(frozen=True, kw_only=True)
class ReadyCounts:
    """What the assistant found, in counts (the card carries no chart facts)."""

    care_gaps: int
    medication_hints: int
    #: Topics of what was counted ("Colorectal cancer screening"), for the card's detail.
    care_gap_topics: tuple[str, ...] = ()
    medication_topics: tuple[str, ...] = ()

    def to_json(self) -> dict[str, int]:
        return {"care_gaps": self.care_gaps, "medication_hints": self.medication_hints}


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _listing(topics: tuple[str, ...], shown: int = 6) -> str:
    more = len(topics) - shown
    return "; ".join(topics[:shown]) + (f"; and {more} more" if more > 0 else "")


def summary_text(counts: ReadyCounts | None) -> str:
    if counts is None:
        # The chart could not be read for the hook: the sidebar reads it when it opens.
        return "smartapp can draft this visit's note: open it to read the chart"
    parts = []
    if counts.care_gaps:
        parts.append(_plural(counts.care_gaps, "care gap", "care gaps"))
    if counts.medication_hints:
        parts.append(_plural(counts.medication_hints, "medication hint", "medication hints"))
    if not parts:
        return "smartapp has this visit's draft ready: no care gaps or medication hints"
    return f"smartapp has ready: {', '.join(parts)}"[:MAX_SUMMARY]


def build_card(
    *,
    uuid: str,
    counts: ReadyCounts | None,
    launch_url: str,
    app_context: str | None,
    partial: bool,
) -> dict[str, Any]:
    """The card. `partial`: the chart read for the hook was incomplete (said in detail)."""
    detail_lines: list[str] = []
    if counts is not None:
        if counts.care_gap_topics:
            detail_lines.append("Care gaps: " + _listing(counts.care_gap_topics))
        if counts.medication_topics:
            detail_lines.append("Medication hints: " + _listing(counts.medication_topics))
    if partial:
        detail_lines.append(
            "The EHR's prefetch was incomplete: the sidebar reads the chart when it opens."
        )
    link: dict[str, Any] = {"label": "Open smartapp", "url": launch_url, "type": "smart"}
    if app_context is not None:
        link["appContext"] = app_context
    card: dict[str, Any] = {
        "uuid": uuid,
        "summary": summary_text(counts),
        # Safety hints (allergy, interaction, contraindication) are worth a look first.
        "indicator": "warning" if counts is not None and counts.medication_hints else "info",
        "source": {"label": SOURCE_LABEL},
        "links": [link],
    }
    if detail_lines:
        card["detail"] = "\n\n".join(detail_lines)
    return card
