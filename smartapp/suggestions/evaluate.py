"""`smartapp evaluate`: run the configured engines over a cohort and report coverage and grounding.

The offline validation a governance team runs before turning an engine on: per kind,
how many patients got a suggestion, what share of statements passed the grounding
verifier, how many were dropped, how long the suggestions are and how long the engine
took. A cohort is the sandbox's generated population or a folder of FHIR R4 Bundles
(`*.json`) or Bulk Data NDJSON files (`*.ndjson`,
https://hl7.org/fhir/uv/bulkdata/export.html); unreadable lines and invalid resources
are skipped and counted, never fatal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from smartapp.fhir.parsing import build_snapshot
from smartapp.fhir.snapshot import FHIRResource, reference_key
from smartapp.siteconfig import SiteConfigError, read_sources
from smartapp.suggestions.registry import LLMSettings, SuggestionService

if TYPE_CHECKING:  # charts imports this module
    from smartapp.suggestions.charts import SafetyReport

# -- cohorts --------------------------------------------------------------------------


class CohortError(Exception):
    """The cohort cannot be read at all (no such folder, no patients)."""


@dataclass
class Cohort:
    source: str
    #: One list of resources per patient, the Patient first.
    patients: list[list[FHIRResource]] = field(default_factory=list)
    unreadable_files: int = 0
    unreadable_lines: int = 0
    #: Resources that were not JSON objects with a resourceType, or had no patient.
    skipped_resources: int = 0


def bundle_resources(bundle: Mapping[str, Any]) -> tuple[list[FHIRResource], int]:
    """A Bundle's resources with ids, `urn:uuid:` references rewritten to `Type/id`.

    Transaction Bundles carry identity in `fullUrl` and leave `id` to the server; to read
    them as a chart, each resource gets the id its fullUrl names.
    """
    entries = [e for e in bundle.get("entry") or [] if isinstance(e, Mapping)]
    targets: dict[str, str] = {}
    resources: list[FHIRResource] = []
    skipped = 0
    for entry in entries:
        resource = entry.get("resource")
        if not isinstance(resource, Mapping) or not isinstance(resource.get("resourceType"), str):
            skipped += 1
            continue
        resource = dict(resource)
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str) and full_url.startswith("urn:uuid:"):
            resource.setdefault("id", full_url.removeprefix("urn:uuid:"))
            targets[full_url] = f"{resource['resourceType']}/{resource['id']}"
        resources.append(resource)
    if targets:
        resources = [_rewrite(r, targets) for r in resources]
    return resources, skipped


def _rewrite(node: Any, targets: Mapping[str, str]) -> Any:
    if isinstance(node, Mapping):
        return {
            k: targets.get(v, v)
            if k == "reference" and isinstance(v, str)
            else _rewrite(v, targets)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(item, targets) for item in node]
    return node


def _patient_of(resource: Mapping[str, Any]) -> str | None:
    for key in ("subject", "patient", "beneficiary"):
        reference = (
            (resource.get(key) or {}).get("reference")
            if isinstance(resource.get(key), Mapping)
            else None
        )
        if isinstance(reference, str) and reference_key(reference).startswith("Patient/"):
            return reference_key(reference)
    return None


def group_by_patient(resources: Iterable[Any]) -> tuple[list[list[FHIRResource]], int]:
    """Each Patient with the resources that point at it (and the Medications those order)."""
    patients: dict[str, list[FHIRResource]] = {}
    medications: dict[str, FHIRResource] = {}
    others: list[FHIRResource] = []
    skipped = 0
    for resource in resources:
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            skipped += 1
            continue
        rtype, rid = resource["resourceType"], resource.get("id")
        if rtype == "Patient" and isinstance(rid, str):
            patients.setdefault(f"Patient/{rid}", [resource])
        elif rtype == "Medication" and isinstance(rid, str):
            medications[f"Medication/{rid}"] = resource
        else:
            others.append(resource)
    for resource in others:
        owner = _patient_of(resource)
        if owner in patients:
            patients[owner].append(resource)
            reference = (resource.get("medicationReference") or {}).get("reference")
            if isinstance(reference, str) and reference_key(reference) in medications:
                medication = medications[reference_key(reference)]
                if medication not in patients[owner]:
                    patients[owner].append(medication)
        elif resource.get("resourceType") not in ("Practitioner", "Organization", "Location"):
            skipped += 1
    return list(patients.values()), skipped


def load_cohort_dir(folder: Path) -> Cohort:
    """Patients from a folder: each `*.json` (a Bundle, a resource, or a list) on its own,
    all `*.ndjson` files together (a bulk export spreads one dataset over several files)."""
    if not folder.is_dir():
        raise CohortError(f"cohort folder not found: {folder}")
    json_files = sorted(folder.glob("*.json"))
    ndjson_files = sorted(folder.glob("*.ndjson"))
    if not json_files and not ndjson_files:
        raise CohortError(f"no *.json or *.ndjson files in {folder}")
    cohort = Cohort(source=str(folder))
    for path in json_files:
        _read_json_file(path, cohort)
    pooled: list[Any] = []
    for path in ndjson_files:
        pooled += _read_ndjson_file(path, cohort)
    if pooled:
        patients, skipped = group_by_patient(pooled)
        cohort.patients += patients
        cohort.skipped_resources += skipped
    if not cohort.patients:
        raise CohortError(f"no Patient resources found in {folder}")
    return cohort


def load_chart_file(path: Path) -> Cohort:
    """One chart file (a FHIR Bundle or other JSON, or NDJSON) as a cohort."""
    if not path.is_file():
        raise CohortError(f"chart file not found: {path}")
    cohort = Cohort(source=str(path))
    if path.suffix == ".ndjson":
        patients, skipped = group_by_patient(_read_ndjson_file(path, cohort))
        cohort.patients += patients
        cohort.skipped_resources += skipped
    else:
        _read_json_file(path, cohort)
    if cohort.unreadable_files:
        raise CohortError(f"not readable as FHIR JSON: {path}")
    if not cohort.patients:
        raise CohortError(f"no Patient resource found in {path}")
    return cohort


def _read_json_file(path: Path, cohort: Cohort) -> None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        cohort.unreadable_files += 1
        return
    resources: list[Any]
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        resources, skipped = bundle_resources(data)
        cohort.skipped_resources += skipped
    elif isinstance(data, list):
        resources = data
    else:
        resources = [data]
    patients, skipped = group_by_patient(resources)
    cohort.patients += patients
    cohort.skipped_resources += skipped


def _read_ndjson_file(path: Path, cohort: Cohort) -> list[Any]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        cohort.unreadable_files += 1
        return []
    pooled: list[Any] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            pooled.append(json.loads(line))
        except json.JSONDecodeError:
            cohort.unreadable_lines += 1
    return pooled


def load_sandbox_cohort() -> Cohort:
    try:
        from smartapp.sandbox.population import generate_population
    except ImportError as exc:
        raise CohortError(
            "the sandbox population is not available in this build (smartapp.sandbox.population)"
        ) from exc
    cohort = Cohort(source="sandbox")
    for bundle in generate_population():
        resources, skipped = bundle_resources(bundle)
        patients, unowned = group_by_patient(resources)
        cohort.patients += patients
        cohort.skipped_resources += skipped + unowned
    return cohort


# -- running ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class KindReport:
    kind: str
    engine: str
    patients: int
    coverage: float
    #: Statements that passed / statements checked; None when the engine produced none.
    grounding_rate: float | None
    dropped: int
    mean_chars: float
    p50_ms: float
    unverified_shown: int = 0
    fallbacks: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "engine": self.engine,
            "patients": self.patients,
            "coverage": self.coverage,
            "grounding_rate": self.grounding_rate,
            "dropped": self.dropped,
            "mean_chars": self.mean_chars,
            "p50_ms": self.p50_ms,
        }


@dataclass(frozen=True, kw_only=True)
class EvaluationReport:
    cohort: Cohort
    kinds: tuple[KindReport, ...]
    invalid_resources: int
    min_grounding_rate: float

    def to_json(self) -> dict[str, Any]:
        return {"kinds": [k.to_json() for k in self.kinds]}

    def below_minimum(self) -> list[KindReport]:
        return [
            k
            for k in self.kinds
            if k.grounding_rate is None or k.grounding_rate < self.min_grounding_rate
        ]


def evaluate(
    service: SuggestionService,
    cohort: Cohort,
    *,
    iss: str | None = None,
    as_of: date | None = None,
) -> EvaluationReport:
    effective = service.config.for_issuer(iss)
    kinds = effective.kind_ids
    fetched_at = datetime.combine(as_of, time(12, 0), tzinfo=UTC) if as_of else None
    covered: dict[str, int] = defaultdict(int)
    checked: dict[str, int] = defaultdict(int)
    passed: dict[str, int] = defaultdict(int)
    dropped: dict[str, int] = defaultdict(int)
    shown_unverified: dict[str, int] = defaultdict(int)
    fallbacks: dict[str, int] = defaultdict(int)
    lengths: dict[str, list[int]] = defaultdict(list)
    elapsed: dict[str, list[float]] = defaultdict(list)
    invalid = 0
    for resources in cohort.patients:
        patient_id = str(resources[0].get("id"))
        snapshot = build_snapshot(resources, patient_id=patient_id, fetched_at=fetched_at)
        invalid += sum(p.count for p in snapshot.problems if p.code == "invalid_resource")
        for run in service.run(snapshot, iss=iss, kinds=kinds).kinds:
            covered[run.kind] += bool(run.suggestions)
            checked[run.kind] += run.checked
            passed[run.kind] += run.passed
            dropped[run.kind] += run.dropped_total
            shown_unverified[run.kind] += run.unverified_shown
            fallbacks[run.kind] += run.fallback_reason is not None
            lengths[run.kind] += [len(s.text) for s in run.suggestions]
            elapsed[run.kind].append(run.elapsed_ms)
    total = len(cohort.patients)
    reports = []
    for kind in kinds:
        info = service.configured_engine_info(iss, kind)
        reports.append(
            KindReport(
                kind=kind,
                engine=f"{info.name}:{info.version}",
                patients=total,
                coverage=round(covered[kind] / total, 4) if total else 0.0,
                grounding_rate=round(passed[kind] / checked[kind], 4) if checked[kind] else None,
                dropped=dropped[kind],
                mean_chars=round(statistics.fmean(lengths[kind]), 1) if lengths[kind] else 0.0,
                p50_ms=round(statistics.median(elapsed[kind]), 2) if elapsed[kind] else 0.0,
                unverified_shown=shown_unverified[kind],
                fallbacks=fallbacks[kind],
            )
        )
    return EvaluationReport(
        cohort=cohort,
        kinds=tuple(reports),
        invalid_resources=invalid,
        min_grounding_rate=effective.min_grounding_rate,
    )


# -- drafts, chart by chart ------------------------------------------------------------------


def draft_record(
    service: SuggestionService,
    resources: list[FHIRResource],
    *,
    iss: str | None = None,
    as_of: date | None = None,
    skipped: int = 0,
) -> dict[str, Any]:
    """Every suggestion for one chart, each statement's verification, and what was dropped.

    `{"patient", "suggestions": [{kind, title, text, citations, engine, statements,
    verification}], "dropped": [{kind, title, text, citations, issues}], "problems": [...]}`:
    the /api/suggestions shape without the per-launch id and decision.
    """
    fetched_at = datetime.combine(as_of, time(12, 0), tzinfo=UTC) if as_of else None
    patient_id = str(resources[0].get("id"))
    snapshot = build_snapshot(resources, patient_id=patient_id, fetched_at=fetched_at)
    run = service.run(snapshot, iss=iss)
    suggestions: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for kind_run in run.kinds:
        for suggestion in kind_run.suggestions:
            suggestions.append(
                {
                    "kind": suggestion.kind,
                    "title": suggestion.title,
                    "text": suggestion.text,
                    "citations": [c.to_json() for c in suggestion.citations],
                    "engine": suggestion.engine.to_json(),
                    "statements": [s.to_json() for s in suggestion.statements],
                    "verification": (
                        suggestion.verification.to_json() if suggestion.verification else None
                    ),
                }
            )
        for title, statement in kind_run.dropped_statements:
            dropped.append(
                {
                    "kind": kind_run.kind,
                    "title": title,
                    "text": statement.text,
                    "citations": [c.to_json() for c in statement.citations],
                    "issues": list(statement.issues),
                }
            )
    problems = [p.to_json() for p in snapshot.problems]
    if skipped:
        problems.append(
            {
                "code": "unreadable",
                "resourceType": "",
                "detail": "skipped on loading",
                "count": skipped,
            }
        )
    return {
        "patient": f"Patient/{patient_id}",
        "suggestions": suggestions,
        "dropped": dropped,
        "problems": problems,
    }


def format_draft(record: Mapping[str, Any]) -> str:
    """The draft record for reading: each suggestion, each statement marked, what was dropped."""
    lines = [f"{record['patient']}"]
    for suggestion in record["suggestions"]:
        engine = suggestion["engine"]
        lines.append("")
        lines.append(f"== {suggestion['title']}  [{engine['name']} {engine['version']}]")
        if engine.get("fallbackReason"):
            lines.append(f"   fallback: {engine['fallbackReason']}")
        for statement in suggestion["statements"]:
            mark = "verified  " if statement["verified"] else "UNVERIFIED"
            cites = ", ".join(c["reference"] for c in statement["citations"]) or "no citation"
            lines.append(f"  {mark} {statement['text']}")
            lines.append(f"             cites: {cites}")
            if statement.get("rule"):  # why it was said, and on whose authority
                lines.append(f"             rule: {statement['rule']}")
            for issue in statement["issues"]:
                lines.append(f"             issue: {issue}")
    if record["dropped"]:
        lines += ["", "== Dropped by the grounding verifier"]
        for item in record["dropped"]:
            lines.append(f"  [{item['kind']}] {item['text']}")
            for issue in item["issues"]:
                lines.append(f"             issue: {issue}")
    if record["problems"]:
        lines += ["", "== Could not be read"]
        for problem in record["problems"]:
            lines.append(
                f"  {problem['code']} {problem['resourceType']} x{problem['count']}: "
                f"{problem['detail']}"
            )
    return "\n".join(lines)


def run_draft_cli(
    args: argparse.Namespace,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """`smartapp draft --chart FILE`: exit 2 on bad input."""
    out = out or sys.stdout
    err = err or sys.stderr
    sources = read_sources(config=args.config, environ=environ)
    env = sources.environ
    try:
        config = sources.site()
        cohort = load_chart_file(Path(args.chart))
    except (SiteConfigError, CohortError) as exc:
        print(f"smartapp draft: {exc}", file=err)
        return 2
    if len(cohort.patients) != 1:
        print(
            f"smartapp draft: {len(cohort.patients)} patients in {args.chart}; "
            "draft reads one chart (use smartapp evaluate --out for a cohort)",
            file=err,
        )
        return 2
    service = SuggestionService(config, LLMSettings.from_env(env))
    record = draft_record(
        service,
        cohort.patients[0],
        iss=args.site,
        as_of=args.as_of,
        skipped=cohort.skipped_resources + cohort.unreadable_lines,
    )
    if args.json:
        record.pop("patient")
        out.write(json.dumps(record) + "\n")
    else:
        out.write(format_draft(record) + "\n")
    return 0


# -- reporting ----------------------------------------------------------------------------


def format_table(report: EvaluationReport) -> str:
    headers = ("kind", "engine", "patients", "coverage", "grounding", "dropped", "mean_chars",
               "p50_ms", "fallbacks")  # fmt: skip
    rows = [
        (
            k.kind,
            k.engine,
            str(k.patients),
            f"{k.coverage:.0%}",
            "n/a" if k.grounding_rate is None else f"{k.grounding_rate:.1%}",
            str(k.dropped),
            f"{k.mean_chars:.0f}",
            f"{k.p50_ms:.1f}",
            str(k.fallbacks),
        )
        for k in report.kinds
    ]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    cohort = report.cohort
    lines.append("")
    lines.append(f"cohort: {cohort.source}, {len(cohort.patients)} patients")
    skipped = [
        (cohort.unreadable_files, "unreadable files"),
        (cohort.unreadable_lines, "unreadable NDJSON lines"),
        (report.invalid_resources, "resources failing R4 validation"),
        (cohort.skipped_resources, "resources without a patient"),
    ]
    notes = [f"{count} {what}" for count, what in skipped if count]
    if notes:
        lines.append("skipped: " + ", ".join(notes))
    below = report.below_minimum()
    if below:
        names = ", ".join(k.kind for k in below)
        lines.append(f"below min_grounding_rate {report.min_grounding_rate:g}: {names}")
    else:
        lines.append(f"every kind meets min_grounding_rate {report.min_grounding_rate:g}")
    return "\n".join(lines)


class EvaluationRecorder(Protocol):
    """Stores an evaluation report where change control can cite it; returns its SHA-256."""

    def __call__(
        self,
        report: Mapping[str, Any],
        *,
        cohort: str,
        site: str | None,
        environ: Mapping[str, str] | None = None,
    ) -> str: ...


def run_cli(
    args: argparse.Namespace,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    recorder: EvaluationRecorder | None = None,
) -> int:
    """`smartapp evaluate`; the exit status: 2 bad input, 1 --strict and below the minimum.

    `recorder` stores the report for `--record` (the command passes governance's): the
    engines know no store, so the store is handed in rather than imported."""
    out = out or sys.stdout
    err = err or sys.stderr
    if getattr(args, "record", False) and recorder is None:
        print("smartapp evaluate: --record needs a store to record in", file=err)
        return 2
    # Read as `serve` reads it: os.environ over the working directory's .env, the site file.
    sources = read_sources(config=args.config, environ=environ)
    env = sources.environ
    try:
        config = sources.site()
    except SiteConfigError as exc:
        print(f"smartapp evaluate: SiteConfigError: {exc}", file=err)
        return 2
    if getattr(args, "reference", None) is not None:
        return _run_reference(args, config, env, out, err)
    try:
        if args.cohort == "sandbox":
            cohort = load_sandbox_cohort()
        else:
            cohort = load_cohort_dir(Path(args.cohort))
    except CohortError as exc:
        print(f"smartapp evaluate: {exc}", file=err)
        return 2
    service = SuggestionService(config, LLMSettings.from_env(env))
    report = evaluate(service, cohort, iss=args.site, as_of=args.as_of)
    safety = _safety_section(args.cohort, service)
    if getattr(args, "out", None) is not None:
        with Path(args.out).open("w", encoding="utf-8") as records:
            for resources in cohort.patients:
                record = draft_record(service, resources, iss=args.site, as_of=args.as_of)
                records.write(json.dumps(record) + "\n")
    recorded: str | None = None
    if getattr(args, "record", False) and recorder is not None:
        cohort_label = "sandbox" if args.cohort == "sandbox" else str(Path(args.cohort).resolve())
        stored = {
            **report.to_json(),
            "cohort": cohort_label,
            "patients": len(cohort.patients),
            "site": args.site,
            "asOf": args.as_of.isoformat() if args.as_of else None,
            "minGroundingRate": report.min_grounding_rate,
        }
        recorded = recorder(stored, cohort=cohort_label, site=args.site, environ=env)
    if args.json:
        data = report.to_json()
        if safety is not None:
            data["safety"] = safety.to_json()
        if recorded is not None:
            data["recorded"] = {"sha256": recorded}
        out.write(json.dumps(data) + "\n")
    else:
        out.write(format_table(report) + "\n")
        if safety is not None:
            from smartapp.suggestions.charts import format_safety

            out.write("\n" + format_safety(safety) + "\n")
        if recorded is not None:
            out.write(f"recorded evaluation sha256:{recorded}\n")
    if args.strict and (report.below_minimum() or (safety is not None and not safety.ok)):
        return 1
    return 0


def _safety_section(cohort: str, service: SuggestionService) -> SafetyReport | None:
    """For a folder of charts with `*.expect.toml` beside them (tests/fixtures/clinical):
    planted conflicts vs raised, and unmet expectations. None for any other cohort."""
    from smartapp.suggestions.charts import expectation_files, safety_report

    if cohort == "sandbox" or not Path(cohort).is_dir() or not expectation_files(Path(cohort)):
        return None
    return safety_report(Path(cohort), service)


def _run_reference(
    args: argparse.Namespace,
    config: Any,
    env: Mapping[str, str],
    out: TextIO,
    err: TextIO,
) -> int:
    """`smartapp evaluate --reference DIR`: drafts against reference assessments and plans."""
    from smartapp.suggestions import reference

    try:
        refs = reference.load_references(Path(args.reference))
    except reference.ReferenceError as exc:
        print(f"smartapp evaluate: {exc}", file=err)
        return 2
    service = SuggestionService(config, LLMSettings.from_env(env))
    rows = reference.score(service, refs, iss=args.site)
    if args.json:
        out.write(json.dumps(reference.scores_json(rows)) + "\n")
    else:
        out.write(reference.format_scores(rows) + "\n")
    return 0
