"""Drafting one chart as production does, and checking it against its expectations.

`draft_chart` loads one chart (a FHIR Bundle) into a snapshot read on a given day and
runs the configured engines through `SuggestionService` with grounding verification, as
the sidebar does. The clinical fixture charts (`tests/fixtures/clinical/*.json`, each
with a `*.expect.toml` beside it) are checked with `check_chart`; `smartapp draft` and
`smartapp evaluate` reuse the same pieces.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from smartapp.fhir.parsing import build_snapshot
from smartapp.fhir.snapshot import ChartSnapshot, SnapshotProblem
from smartapp.siteconfig import load_site_config
from smartapp.suggestions.evaluate import bundle_resources
from smartapp.suggestions.interfaces import Statement, Suggestion
from smartapp.suggestions.registry import SuggestionRun, SuggestionService


def chart_snapshot(bundle: Mapping[str, Any], as_of: date | None = None) -> ChartSnapshot:
    """One patient's Bundle as the snapshot a launch would hold (Patient first)."""
    resources, _skipped = bundle_resources(bundle)
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    if not patients:
        raise ValueError("the chart has no Patient resource")
    fetched_at = datetime.combine(as_of, time(12, 0), tzinfo=UTC) if as_of else None
    return build_snapshot(resources, patient_id=str(patients[0].get("id")), fetched_at=fetched_at)


def draft_chart(
    bundle: Mapping[str, Any],
    *,
    as_of: date | None = None,
    service: SuggestionService | None = None,
    iss: str | None = None,
) -> tuple[ChartSnapshot, SuggestionRun]:
    """Every configured kind for one chart (default: the default site configuration)."""
    service = service or SuggestionService(load_site_config(None))
    snapshot = chart_snapshot(bundle, as_of)
    return snapshot, service.run(snapshot, iss=iss)


def shown_statements(run: SuggestionRun) -> list[tuple[str, Statement]]:
    """(kind, statement) for every statement a clinician would see."""
    return [(s.kind, st) for s in run.suggestions for st in s.statements]


def raised_rules(suggestions: Iterable[Suggestion]) -> set[str]:
    """The ids of the safety rules whose statements were shown."""
    found: set[str] = set()
    for suggestion in suggestions:
        for statement in suggestion.statements:
            if statement.rule_id:
                found.add(statement.rule_id)
    return found


# -- expectations -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Expectation:
    text: str
    kind: str | None = None
    verified: bool | None = None
    #: Only the first statement of the kind's first card counts (`first = true`).
    first: bool = False

    def matches(self, kind: str, statement: Statement) -> bool:
        if self.kind is not None and kind != self.kind:
            return False
        if self.verified is not None and statement.verified is not self.verified:
            return False
        return re.search(self.text, statement.text, re.IGNORECASE) is not None


@dataclass(frozen=True, kw_only=True)
class ProblemExpectation:
    """A `[[problem]]`: the chart load must report this (`code`, `resource_type`, `count`)."""

    code: str
    resource_type: str
    count: int | None = None

    def matches(self, problem: SnapshotProblem) -> bool:
        return (
            problem.code == self.code
            and problem.resource_type == self.resource_type
            and (self.count is None or problem.count == self.count)
        )

    def __str__(self) -> str:
        count = f" x{self.count}" if self.count is not None else ""
        return f"{self.code} {self.resource_type}{count}"


@dataclass(frozen=True, kw_only=True)
class ChartExpectations:
    chart: Path
    description: str
    as_of: date | None
    must: tuple[Expectation, ...] = ()
    must_not: tuple[Expectation, ...] = ()
    conflicts: tuple[str, ...] = field(default=())
    problems: tuple[ProblemExpectation, ...] = ()


def _expectations(items: Any) -> tuple[Expectation, ...]:
    out = []
    for item in items or []:
        verified = item.get("verified")
        out.append(
            Expectation(
                text=str(item["text"]),
                kind=str(item["kind"]) if item.get("kind") else None,
                verified=bool(verified) if verified is not None else None,
                first=bool(item.get("first", False)),
            )
        )
    return tuple(out)


def load_expectations(path: Path) -> ChartExpectations:
    """`<name>.expect.toml` and the chart `<name>.json` beside it."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    raw_as_of = data.get("as_of")
    as_of = raw_as_of if isinstance(raw_as_of, date) else None
    if isinstance(raw_as_of, str):
        as_of = date.fromisoformat(raw_as_of)
    return ChartExpectations(
        chart=path.with_name(path.name.removesuffix(".expect.toml") + ".json"),
        description=str(data.get("description", "")),
        as_of=as_of,
        must=_expectations(data.get("must")),
        must_not=_expectations(data.get("must_not")),
        conflicts=tuple(str(c["rule"]) for c in data.get("conflict") or []),
        problems=tuple(
            ProblemExpectation(
                code=str(p["code"]),
                resource_type=str(p["resource_type"]),
                count=int(p["count"]) if "count" in p else None,
            )
            for p in data.get("problem") or []
        ),
    )


@dataclass(frozen=True, kw_only=True)
class ChartCheck:
    expectations: ChartExpectations
    run: SuggestionRun
    failures: tuple[str, ...]
    conflicts_raised: frozenset[str]
    #: What the chart load skipped or could not read (the sidebar's "could not be read").
    problems: tuple[SnapshotProblem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures


def check_chart(
    expectations: ChartExpectations, service: SuggestionService | None = None
) -> ChartCheck:
    bundle = json.loads(expectations.chart.read_text(encoding="utf-8"))
    snapshot, run = draft_chart(bundle, as_of=expectations.as_of, service=service)
    shown = shown_statements(run)
    leading: list[tuple[str, Statement]] = []
    for suggestion in run.suggestions:
        if suggestion.statements and all(kind != suggestion.kind for kind, _ in leading):
            leading.append((suggestion.kind, suggestion.statements[0]))
    failures: list[str] = []
    for want in expectations.must:
        candidates = leading if want.first else shown
        if not any(want.matches(kind, st) for kind, st in candidates):
            where = "first in " if want.first else ""
            failures.append(f"missing: {where}{want.kind or 'any kind'} /{want.text}/")
    for avoid in expectations.must_not:
        hits = [st.text for kind, st in shown if avoid.matches(kind, st)]
        if hits:
            failures.append(f"must not: {avoid.kind or 'any kind'} /{avoid.text}/ but {hits[0]!r}")
    for want_problem in expectations.problems:
        if not any(want_problem.matches(p) for p in snapshot.problems):
            reported = ", ".join(
                f"{p.code} {p.resource_type} x{p.count}" for p in snapshot.problems
            )
            failures.append(
                f"problem not reported: {want_problem} (reported: {reported or 'none'})"
            )
    raised = raised_rules(run.suggestions)
    for rule in expectations.conflicts:
        if rule not in raised:
            failures.append(f"conflict not raised: {rule}")
    return ChartCheck(
        expectations=expectations,
        run=run,
        failures=tuple(failures),
        conflicts_raised=frozenset(raised),
        problems=snapshot.problems,
    )


def expectation_files(folder: Path) -> Sequence[Path]:
    return sorted(folder.glob("*.expect.toml"))


@dataclass(frozen=True, kw_only=True)
class SafetyReport:
    """Conflicts the chart set's expectations plant vs those the drafts raised, and every
    other expectation (must, must not, problems) that a chart's drafts did not meet."""

    expected: int
    raised: int
    missed: tuple[tuple[str, str], ...]  # (chart name, rule id)
    charts: int = 0
    #: (chart name, failure) for every unmet expectation, conflicts included.
    failures: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        return not self.missed and not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "charts": self.charts,
            "expected": self.expected,
            "raised": self.raised,
            "missed": [{"chart": c, "rule": r} for c, r in self.missed],
            "failures": [{"chart": c, "failure": f} for c, f in self.failures],
        }


def safety_report(folder: Path, service: SuggestionService | None = None) -> SafetyReport:
    """Every `*.expect.toml` of a folder: planted `[[conflict]]` rules vs raised ones."""
    expected = raised = charts = 0
    missed: list[tuple[str, str]] = []
    failures: list[tuple[str, str]] = []
    for path in expectation_files(folder):
        charts += 1
        name = path.name.removesuffix(".expect.toml")
        check = check_chart(load_expectations(path), service)
        failures += [(name, failure) for failure in check.failures]
        for rule in check.expectations.conflicts:
            expected += 1
            if rule in check.conflicts_raised:
                raised += 1
            else:
                missed.append((name, rule))
    return SafetyReport(
        expected=expected,
        raised=raised,
        missed=tuple(missed),
        charts=charts,
        failures=tuple(failures),
    )


def format_safety(report: SafetyReport) -> str:
    """The `safety` section of `smartapp evaluate`'s table."""
    lines = [
        f"safety: {report.charts} chart(s) with expectations; conflicts planted "
        f"{report.expected}, raised {report.raised}"
    ]
    lines += [f"  missed: {chart}: {rule}" for chart, rule in report.missed]
    others = [(c, f) for c, f in report.failures if not f.startswith("conflict not raised")]
    if others:
        lines.append(f"  {len(others)} other expectation(s) not met:")
        lines += [f"    {chart}: {failure}" for chart, failure in others]
    elif report.charts:
        lines.append("  every must / must not / problem expectation met")
    return "\n".join(lines)
