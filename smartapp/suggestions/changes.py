"""What changed since the last note or visit: the first thing the sidebar shows.

A clinician opening a chart asks "what is new since I (or a colleague) last saw this
patient?". The anchor is the latest signed note (DocumentReference) or finished visit
(Encounter) in the chart snapshot that is not part of the current visit (the launch's
Encounter, or today: drafts, notes entered in error and superseded ones never count); when the chart
holds neither, the last `FALLBACK_DAYS` days are used and the anchor says so. Since that
day: new results (with the value the last visit saw), medications started and stopped,
problems added. Every item cites its resources and passes the grounding verifier like any
suggestion; an item that does not is left out.

https://hl7.org/fhir/R4/documentreference.html · https://hl7.org/fhir/R4/encounter.html
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from smartapp.fhir.snapshot import ChartSnapshot, FHIRResource
from smartapp.suggestions.assessment import range_status
from smartapp.suggestions.facts import (
    BloodPressure,
    ChartFacts,
    Result,
    capitalize,
    concept_text,
    date_part,
    describe,
    interpretation_flag,
    medication_concept,
    ref,
    to_date,
)
from smartapp.suggestions.grounding import GroundingVerifier
from smartapp.suggestions.interfaces import Citation, Statement
from smartapp.suggestions.terminology import BP_DIASTOLIC, BP_SYSTOLIC, KEY_RESULTS, LOINC

#: Days looked back when the chart holds no earlier note or visit.
FALLBACK_DAYS = 90

#: Item categories, in the order the sidebar shows them.
RESULT = "result"
STARTED = "medication_started"
STOPPED = "medication_stopped"
PROBLEM = "problem"
CATEGORIES: tuple[str, ...] = (RESULT, STARTED, STOPPED, PROBLEM)

#: Notes that are not a finished note of an earlier visit.
_NOT_A_NOTE_STATUS = {"entered-in-error", "superseded"}
_DRAFT_DOC_STATUS = {"preliminary", "entered-in-error"}
#: Visits that took place.
_VISIT_DONE = {"finished", "in-progress", "onleave", "arrived", "triaged"}
_STOPPED_STATUS = {"stopped", "completed", "cancelled"}
_BP_PARTS = {f"{LOINC}|{code}" for code in (*BP_SYSTOLIC, *BP_DIASTOLIC)}


@dataclass(frozen=True, kw_only=True)
class Anchor:
    """The day changes are counted from, and what set it."""

    #: "note" (a DocumentReference), "visit" (an Encounter) or "window" (neither found).
    kind: str
    day: date
    reference: str | None = None
    #: What the anchor is, for the sidebar: "the last note (Progress note, 2026-08-03)".
    text: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "date": self.day.isoformat(),
            "reference": self.reference,
            "text": self.text,
        }


@dataclass(frozen=True, kw_only=True)
class Change:
    category: str
    statement: Statement

    def to_json(self) -> dict[str, Any]:
        return {"category": self.category, **self.statement.to_json()}


@dataclass(frozen=True, kw_only=True)
class Changes:
    anchor: Anchor
    items: tuple[Change, ...]

    def of(self, category: str) -> list[Change]:
        return [item for item in self.items if item.category == category]

    def to_json(self) -> dict[str, Any]:
        return {"anchor": self.anchor.to_json(), "items": [i.to_json() for i in self.items]}


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _current_visit(snapshot: ChartSnapshot) -> tuple[str | None, date | None]:
    encounter = snapshot.encounter
    if not encounter:
        return None, None
    start = to_date(_dict(encounter.get("period")).get("start"))
    return ref(encounter), start


def _in_current_visit(
    resource: Mapping[str, Any],
    day: date,
    visit: str | None,
    visit_start: date | None,
    today: date,
) -> bool:
    # A note written today (a nurse's intake, this app's own draft) is this visit's.
    if day >= today or (visit_start is not None and day >= visit_start):
        return True
    encounters = _dict(resource.get("context")).get("encounter")
    for item in encounters if isinstance(encounters, list) else []:
        reference = _dict(item).get("reference")
        if visit is not None and isinstance(reference, str) and reference.endswith(visit):
            return True
    return False


def _note_day(doc: Mapping[str, Any]) -> date | None:
    return to_date(doc.get("date")) or to_date(
        _dict(_dict(doc.get("context")).get("period")).get("start")
    )


def find_anchor(snapshot: ChartSnapshot, today: date) -> Anchor:
    """The latest earlier note or visit in the snapshot (see the module docstring)."""
    visit, visit_start = _current_visit(snapshot)
    candidates: list[tuple[date, str, FHIRResource]] = []
    for doc in snapshot.of_type("DocumentReference"):
        day = _note_day(doc)
        if (
            day is None
            or not doc.get("id")
            or doc.get("status") in _NOT_A_NOTE_STATUS
            or doc.get("docStatus") in _DRAFT_DOC_STATUS
            or _in_current_visit(doc, day, visit, visit_start, today)
        ):
            continue
        candidates.append((day, "note", doc))
    for encounter in snapshot.of_type("Encounter"):
        period = _dict(encounter.get("period"))
        day = to_date(period.get("end")) or to_date(period.get("start"))
        if (
            day is None
            or not encounter.get("id")
            or ref(encounter) == visit
            or encounter.get("status") not in _VISIT_DONE
            or day >= today
            or (visit_start is not None and day >= visit_start)
        ):
            continue
        candidates.append((day, "visit", encounter))
    if not candidates:
        start = today - timedelta(days=FALLBACK_DAYS)
        return Anchor(
            kind="window",
            day=start,
            text=f"no earlier note or visit in the chart: the last {FALLBACK_DAYS} days",
        )
    day, kind, resource = max(candidates, key=lambda c: (c[0], c[1] == "note"))
    if kind == "note":
        what = concept_text(resource.get("type")) or "note"
        text = f"the last note ({what}, {day.isoformat()})"
    else:
        what = concept_text((resource.get("type") or [None])[0]) or "visit"
        text = f"the last visit ({what}, {day.isoformat()})"
    return Anchor(kind=kind, day=day, reference=ref(resource), text=text)


def _cite(snapshot: ChartSnapshot, resources: Sequence[Mapping[str, Any]]) -> tuple[Citation, ...]:
    seen: dict[str, Citation] = {}
    for resource in resources:
        reference = ref(resource)
        seen.setdefault(
            reference, Citation(reference=reference, display=describe(resource, snapshot))
        )
    return tuple(seen.values())


def _after(when: str | None, anchor: Anchor) -> bool:
    day = to_date(when)
    return day is not None and day > anchor.day


def _before_or_on(when: str | None, anchor: Anchor) -> bool:
    day = to_date(when)
    return day is not None and day <= anchor.day


def _on(when: str | None) -> str:
    day = date_part(when)
    return f" on {day}" if day else ""


def _result_items(facts: ChartFacts, anchor: Anchor) -> list[tuple[int, str, Statement]]:
    order = {f"{LOINC}|{code}": i for i, code in enumerate(KEY_RESULTS)}
    rows: list[tuple[int, str, Statement]] = []
    readings = facts.blood_pressures
    if readings and _after(readings[0].when, anchor):
        rows.append((order.get(f"{LOINC}|85354-9", 0), "", _bp_item(facts, readings, anchor)))
    for key, results in facts.results.items():
        if key in _BP_PARTS or not _after(results[0].when, anchor):
            continue
        if not _news(facts, key, results, anchor, key in order):
            continue
        rows.append(
            (
                order.get(key, len(order)),
                results[0].name.lower(),
                _result_item(facts, results, anchor),
            )
        )
    rows.sort(key=lambda row: (row[0], row[1]))
    return rows


#: Vital signs that are news only when out of range (a heart rate of 67 "was 67" is not).
_ROUTINE_VITALS = {f"{LOINC}|{code}" for code in ("8867-4", "59408-5", "8310-5", "39156-5")}


def _news(
    facts: ChartFacts, key: str, results: Sequence[Result], anchor: Anchor, key_result: bool
) -> bool:
    """A full panel since the last note is twenty lines; the news in it is what is out of
    range, and a key result that moved (the cards hold the rest)."""
    latest = results[0]
    if _abnormal(facts, latest):
        return True
    if not key_result or key in _ROUTINE_VITALS:
        return False
    seen = next((r for r in results[1:] if _before_or_on(r.when, anchor)), None)
    return seen is None or seen.value_text() != latest.value_text()


def _abnormal(facts: ChartFacts, result: Result) -> bool:
    """Flagged by the lab, or outside its own reference range (else the default table's)."""
    if interpretation_flag(result.resource):
        return True
    status, _ = range_status(facts, result)
    return status is not None and status.startswith(("above", "below"))


def _result_item(facts: ChartFacts, results: Sequence[Result], anchor: Anchor) -> Statement:
    latest = results[0]
    text = f"{capitalize(latest.name)} {latest.value_text()}{_on(latest.date)}"
    cited: list[Mapping[str, Any]] = [latest.resource]
    # The value the last visit saw (its date is before the anchor; the value is the news).
    seen = next((r for r in results[1:] if _before_or_on(r.when, anchor)), None)
    if seen is not None:
        text += f" (was {seen.value_text()})"
        cited.append(seen.resource)
    return Statement(text=text, citations=_cite(facts.snapshot, cited))


def _bp_item(facts: ChartFacts, readings: Sequence[BloodPressure], anchor: Anchor) -> Statement:
    latest = readings[0]
    text = f"BP {latest.text()}{_on(latest.date)}"
    cited: list[Mapping[str, Any]] = list(latest.resources)
    seen = next((r for r in readings[1:] if _before_or_on(r.when, anchor)), None)
    if seen is not None:
        text += f" (was {seen.text()})"
        cited += seen.resources
    return Statement(text=text, citations=_cite(facts.snapshot, cited))


def _medication_items(facts: ChartFacts, anchor: Anchor) -> list[Change]:
    snapshot = facts.snapshot
    items: list[Change] = []
    for med in sorted(facts.medications, key=lambda m: (m.authored or "", m.name.lower())):
        if med.reported or not _after(med.authored, anchor):
            continue
        items.append(
            Change(
                category=STARTED,
                statement=Statement(
                    text=f"Started {med.name} on {med.authored}",
                    citations=_cite(snapshot, [med.request]),
                ),
            )
        )
    for mr in snapshot.of_type("MedicationRequest"):
        status = mr.get("status")
        if not mr.get("id") or status not in _STOPPED_STATUS:
            continue
        ended = date_part(_dict(_dict(mr.get("dispenseRequest")).get("validityPeriod")).get("end"))
        # When the order ended is what says it was stopped since; without an end date, an
        # order written and stopped since the anchor is still news.
        if not (_after(ended, anchor) or (ended is None and _after(mr.get("authoredOn"), anchor))):
            continue
        concept, _ = medication_concept(mr, snapshot)
        name = concept_text(concept)
        if not name:
            continue
        text = f"{name} {status}" + (f" {ended}" if ended else "")
        reason = concept_text(mr.get("statusReason"))
        if reason:
            text += f" ({reason.lower()})"
        items.append(
            Change(
                category=STOPPED,
                statement=Statement(text=capitalize(text), citations=_cite(snapshot, [mr])),
            )
        )
    return items


def _problem_items(facts: ChartFacts, anchor: Anchor) -> list[Change]:
    items: list[Change] = []
    for problem in facts.problems:
        recorded = problem.condition.get("recordedDate")
        if _after(problem.onset, anchor):
            text = f"{problem.name}, onset {date_part(problem.onset)}"
        elif _after(recorded if isinstance(recorded, str) else None, anchor) and not (
            problem.onset and _before_or_on(problem.onset, anchor)
        ):
            text = f"{problem.name}, added to the list {date_part(recorded)}"
        else:
            continue
        items.append(
            Change(
                category=PROBLEM,
                statement=Statement(
                    text=text, citations=_cite(facts.snapshot, [problem.condition])
                ),
            )
        )
    return items


def changes_since(
    snapshot: ChartSnapshot,
    *,
    verifier: GroundingVerifier | None = None,
    today: date | None = None,
) -> Changes:
    """What changed since the last note or visit, each item verified against the chart."""
    facts = ChartFacts.of(snapshot)
    day = today or facts.as_of
    anchor = find_anchor(snapshot, day)
    drafted = [Change(category=RESULT, statement=s) for _, _, s in _result_items(facts, anchor)]
    drafted += _medication_items(facts, anchor)
    drafted += _problem_items(facts, anchor)
    checker = verifier or (
        GroundingVerifier.of(snapshot) if today is None else GroundingVerifier(snapshot, today=day)
    )
    items: list[Change] = []
    for change in drafted:
        if checker.check(change.statement).ok:
            items.append(
                Change(
                    category=change.category,
                    statement=Statement(
                        text=change.statement.text,
                        citations=change.statement.citations,
                        verified=True,
                    ),
                )
            )
    return Changes(anchor=anchor, items=tuple(items))
