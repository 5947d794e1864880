"""`smartapp evaluate --reference DIR`: drafts measured against a clinician's own A&P.

Beside each chart `<name>.json` (one FHIR R4 collection Bundle) a `<name>.reference.toml`
holds the clinician's assessment and plan split into elements:

    as_of = "2026-11-23"          # the day the chart is read
    note = "..."                  # the reference note itself (for the length comparison)
    [[fact]]                      # something true of the chart the note states
    text = "HbA1c 8.6%, rising"
    match = "hba1c 8\\.6"         # re.search, case-insensitive, over one shown statement
    contradicted_by = "..."       # optional: a shown statement matching this contradicts it
    [[decision]]                  # a plan element
    text = "Add an SGLT2 inhibitor"
    match = "sglt2"

Per kind, and for all kinds together, the report gives the share of elements supplied
(some shown statement of that kind matches), the number contradicted, and the length of
what was shown against the reference note.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from smartapp.fhir.parsing import build_snapshot
from smartapp.suggestions.registry import SuggestionService

ALL = "all kinds"


class ReferenceError(ValueError):
    """A reference file is malformed (names the file)."""


@dataclass(frozen=True, kw_only=True)
class Element:
    role: str  # "fact" or "decision"
    text: str
    match: re.Pattern[str]
    contradicted_by: re.Pattern[str] | None = None


@dataclass(frozen=True, kw_only=True)
class Reference:
    name: str
    chart: Path
    as_of: date | None
    note: str
    elements: tuple[Element, ...]


def _pattern(value: Any, *, where: str) -> re.Pattern[str]:
    if not isinstance(value, str) or not value:
        raise ReferenceError(f"{where}: needs match = a regular expression")
    try:
        return re.compile(value, re.IGNORECASE)
    except re.error as exc:
        raise ReferenceError(f"{where}: bad regular expression: {exc}") from exc


def load_references(folder: Path) -> list[Reference]:
    refs: list[Reference] = []
    for path in sorted(folder.glob("*.reference.toml")):
        chart = path.with_name(path.name.removesuffix(".reference.toml") + ".json")
        if not chart.is_file():
            raise ReferenceError(f"{path}: no chart {chart.name} beside it")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ReferenceError(f"{path}: {exc}") from exc
        elements: list[Element] = []
        for role in ("fact", "decision"):
            for index, item in enumerate(data.get(role, [])):
                where = f"{path} {role} {index + 1}"
                contra = item.get("contradicted_by")
                elements.append(
                    Element(
                        role=role,
                        text=str(item.get("text", "")),
                        match=_pattern(item.get("match"), where=where),
                        contradicted_by=_pattern(contra, where=where) if contra else None,
                    )
                )
        as_of = data.get("as_of")
        refs.append(
            Reference(
                name=chart.stem,
                chart=chart,
                as_of=date.fromisoformat(str(as_of)) if as_of else None,
                note=str(data.get("note", "")),
                elements=tuple(elements),
            )
        )
    if not refs:
        raise ReferenceError(f"no *.reference.toml in {folder}")
    return refs


@dataclass
class KindScore:
    kind: str
    elements: int = 0
    supplied: int = 0
    facts: int = 0
    facts_supplied: int = 0
    decisions: int = 0
    decisions_supplied: int = 0
    contradicted: int = 0
    chars: int = 0
    reference_chars: int = 0
    misses: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "elements": self.elements,
            "supplied": self.supplied,
            "supplied_share": round(self.supplied / self.elements, 4) if self.elements else None,
            "facts_share": round(self.facts_supplied / self.facts, 4) if self.facts else None,
            "decisions_share": (
                round(self.decisions_supplied / self.decisions, 4) if self.decisions else None
            ),
            "contradicted": self.contradicted,
            "chars": self.chars,
            "reference_chars": self.reference_chars,
        }


def _shown(service: SuggestionService, ref: Reference, iss: str | None) -> dict[str, list[str]]:
    from smartapp.suggestions.evaluate import bundle_resources

    bundle = json.loads(ref.chart.read_text(encoding="utf-8"))
    resources, _ = bundle_resources(bundle)
    fetched = datetime.combine(ref.as_of, time(12, 0), tzinfo=UTC) if ref.as_of else None
    snapshot = build_snapshot(resources, patient_id=str(resources[0]["id"]), fetched_at=fetched)
    shown: dict[str, list[str]] = {}
    for run in service.run(snapshot, iss=iss).kinds:
        shown[run.kind] = [
            s.text for sug in run.suggestions for s in sug.statements if s.verified is not False
        ]
    return shown


def score(
    service: SuggestionService, refs: Iterable[Reference], *, iss: str | None = None
) -> list[KindScore]:
    """Per kind (and `ALL`): elements supplied and contradicted, and length."""
    scores: dict[str, KindScore] = {}
    for ref in refs:
        shown = _shown(service, ref, iss)
        shown[ALL] = [t for texts in shown.values() for t in texts]
        for kind, texts in shown.items():
            row = scores.setdefault(kind, KindScore(kind=kind))
            row.chars += sum(len(t) for t in texts)
            row.reference_chars += len(ref.note)
            for element in ref.elements:
                hit = any(element.match.search(t) for t in texts)
                row.elements += 1
                row.supplied += hit
                if element.role == "fact":
                    row.facts += 1
                    row.facts_supplied += hit
                else:
                    row.decisions += 1
                    row.decisions_supplied += hit
                if not hit and kind == ALL:
                    row.misses.append(f"{ref.name}: {element.role}: {element.text}")
                if element.contradicted_by and any(
                    element.contradicted_by.search(t) for t in texts
                ):
                    row.contradicted += 1
    ordered = [s for k, s in scores.items() if k != ALL]
    return [*ordered, scores[ALL]] if ALL in scores else ordered


def format_scores(rows: list[KindScore]) -> str:
    def pct(n: int, d: int) -> str:
        return f"{n / d:.0%}" if d else "n/a"

    lines = [
        f"{'kind':22} {'supplied':>9} {'facts':>6} {'decisions':>9} {'contradicted':>12} "
        f"{'chars':>7} {'ref_chars':>9}"
    ]
    for r in rows:
        lines.append(
            f"{r.kind:22} {pct(r.supplied, r.elements):>9} {pct(r.facts_supplied, r.facts):>6} "
            f"{pct(r.decisions_supplied, r.decisions):>9} {r.contradicted:>12} {r.chars:>7} "
            f"{r.reference_chars:>9}"
        )
    total = rows[-1] if rows else None
    if total is not None and total.misses:
        lines.append("")
        lines.append("not supplied:")
        lines += [f"  {m}" for m in total.misses]
    return "\n".join(lines)


def scores_json(rows: list[KindScore]) -> Mapping[str, Any]:
    return {"reference": [r.to_json() for r in rows]}
