"""The problem-oriented assessment and plan: one block per active problem.

Each block says what a clinician writes: the problem and its status in a phrase, the
latest relevant results with their dates, trend over a window and whether at goal or in
range, the medications treating it (and those stopped, with the reason the chart gives),
what is due, and plan options for the clinician to choose ("consider …"), each naming
what triggered it. Which results and drug classes belong to a problem, the goals and the
plan options are data (`smartapp/clinical/data/assessment.toml`, `plan_options.toml`,
`valuesets/results.toml`); numbers and dates in the text come from the cited resources,
so the grounding verifier checks them; goal numbers and guideline wording go to
`Statement.rule`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from smartapp import clinical
from smartapp.fhir.snapshot import ChartSnapshot, FHIRResource
from smartapp.suggestions import risk_scores, safety, units
from smartapp.suggestions.facts import (
    BloodPressure,
    ChartFacts,
    Medication,
    Problem,
    RangeCheck,
    Result,
    age_note,
    capitalize,
    concept_text,
    date_part,
    describe,
    drug_classes,
    medication_concept,
    parse_when,
    reference_range_check,
    to_date,
)
from smartapp.suggestions.grounding import canonical_unit
from smartapp.suggestions.interfaces import Citation, Statement
from smartapp.suggestions.ranges import DefaultRange, default_range_check
from smartapp.suggestions.terminology import DRUG_CLASSES, MEDICATION_NAMES

BLOOD_PRESSURE = "blood_pressure"
#: How far back a trend looks.
TREND_MONTHS = 12
_STOPPED = {"stopped", "completed", "cancelled"}


@dataclass(frozen=True, kw_only=True)
class ProblemSpec:
    group: str
    results: tuple[str, ...]
    classes: frozenset[str]
    cite: clinical.Source


@dataclass(frozen=True, kw_only=True)
class Goal:
    result: str
    low: tuple[Decimal, ...] = ()  # at least
    high: tuple[Decimal, ...] = ()  # strictly below (`below`) or at most (`at_most`)
    high_inclusive: bool = False
    unit: str | None = None
    text: str
    cite: clinical.Source
    #: How to say "above goal", "below goal", "at goal" for this result (e.g. "albuminuria").
    words: Mapping[str, str] = field(default_factory=dict)
    #: Named categories, first match wins (KDIGO G1-G5 for eGFR, A1-A3 for UACR).
    categories: tuple[Category, ...] = ()
    #: The category is the problem's status in its head line ("CKD: G3a A2"); false for a
    #: category that only reads beside the value ("(borderline-high)").
    category_in_head: bool = True
    #: The goal holds from this age in years (CDC's adult BMI categories: 20 and older)
    #: and up to `max_age` (NHLBI's pediatric lipid categories: 2 to 19).
    min_age: int | None = None
    max_age: int | None = None
    #: The goal holds for a patient with an active problem in one of these groups, and
    #: then before the result's general goal (LDL-C below 70 mg/dL with coronary disease).
    with_problem: frozenset[str] = frozenset()
    #: The goal holds while the chart says the patient is pregnant, and then before the
    #: result's general goals (ACOG's below 140/90 mm Hg, not ACC/AHA's 130/80).
    pregnant: bool = False


@dataclass(frozen=True, kw_only=True)
class Category:
    """A named band of one result: the value is at least `at_least` or above `above`
    (neither: every value that reached no earlier band)."""

    label: str
    at_least: Decimal | None = None
    above: Decimal | None = None

    def holds(self, value: Decimal) -> bool:
        if self.at_least is not None:
            return value >= self.at_least
        if self.above is not None:
            return value > self.above
        return True


def category_of(goal: Goal, reading: Result | BloodPressure) -> str | None:
    """The reading's category label, when the goal names categories and the units compare."""
    if not goal.categories or not isinstance(reading, Result):
        return None
    converted = values_in(goal.result, reading, goal.unit)
    value = converted[0] if converted else None
    if value is None:
        return None
    return next((c.label for c in goal.categories if c.holds(value)), None)


@dataclass(frozen=True, kw_only=True)
class PlanOption:
    id: str
    problem: str
    text: str
    rule: str
    cite: clinical.Source
    result: str | None = None
    above: tuple[Decimal, ...] = ()
    below: tuple[Decimal, ...] = ()
    at_least: tuple[Decimal, ...] = ()
    unit: str | None = None
    out_of_range: str | None = None
    rise_at_least: Decimal | None = None
    within_days: int | None = None
    due_months: int | None = None
    with_problem: frozenset[str] = frozenset()
    #: Not with an active problem in one of these groups (secondary prevention has its own).
    without_problem: frozenset[str] = frozenset()
    classes_present: frozenset[str] = frozenset()
    classes_absent: frozenset[str] = frozenset()
    ingredients_present: frozenset[str] = frozenset()
    #: Words of a current medication's name ("metoprolol tartrate": the salt tells the
    #: immediate-release drug from the evidence-based succinate); the trigger names it.
    names_present: frozenset[str] = frozenset()
    #: Options with the same decision are offered once, in the first block that fires one
    #: ("consider a statin" for diabetes, CKD and a high LDL is one choice); default: id.
    decision: str = ""
    #: The patient's age in years at the chart's date (inclusive bounds).
    min_age: int | None = None
    max_age: int | None = None
    #: Say what treats the problem now ("on metformin") or that nothing does.
    show_treatment: bool = False
    #: Only for a patient the chart says is pregnant (context.pregnancy_evidence).
    pregnant: bool = False
    #: Not while the chart says the patient is pregnant (a nonpregnant adult's rule).
    not_pregnant: bool = False
    #: Not when a medication treating the problem was ordered after the result that
    #: triggers the option: the therapy was just changed, and the repeat test judges it.
    unless_changed_since: bool = False
    #: Only when one did (of `classes_present`'s classes, when given): the follow-up the
    #: change calls for, as no result of the option's test has been taken since.
    changed_since: bool = False
    #: A risk score (risk_scores.toml) at or above a threshold by Patient.gender; genders
    #: without an entry use `male`'s (no sex point is counted for them).
    score: str | None = None
    score_at_least: Mapping[str, int] = field(default_factory=dict)
    #: Drug groups (value sets of valuesets/drug_safety.toml) the option would add: it is
    #: not offered while a contraindication of the safety tables holds for one of them (an
    #: MRA with a potassium of 5.0 or more), nor when a result such a rule reads is not on
    #: file; the results it read are cited.
    guard: tuple[str, ...] = ()
    #: Say that the absent classes are not on the list ("no beta blocker on the
    #: medication list"): the trigger of an option for what the patient is not on.
    say_absent: bool = False
    #: Say the age when it bounds the option ("age 68" for ADA's statin at 40-75); not
    #: for an age bound that only splits adults' rules from children's.
    say_age: bool = True
    #: What the option adds, as a noun ("a mineralocorticoid receptor antagonist"): when a
    #: guard holds it back, the block says so and why, instead of leaving it out silently.
    held: str = ""
    #: Drug names `text` offers as the choice ("low-dose aspirin"): not chart facts, so
    #: the verifier does not look for them in the citations (Statement.proposes).
    proposes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Decision:
    """A choice with a home block: offered under the `home` problem group when the patient
    has one, and pointed to ("Statin: see Hyperlipidemia") from the other blocks."""

    id: str
    home: str
    label: str
    cite: clinical.Source


@dataclass(frozen=True, kw_only=True)
class Knowledge:
    problems: Mapping[str, ProblemSpec]
    #: Each result's general goals, in file order: the first whose ages hold applies.
    goals: Mapping[str, tuple[Goal, ...]]
    options: tuple[PlanOption, ...]
    value_sets: Mapping[str, clinical.ValueSet]
    decisions: Mapping[str, Decision] = field(default_factory=dict)
    #: Goals for patients with a given problem (`Goal.with_problem`), in file order.
    problem_goals: tuple[Goal, ...] = ()


def _numbers(value: Any, *, where: str) -> tuple[Decimal, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    try:
        return tuple(Decimal(str(v)) for v in items)
    except ArithmeticError as exc:  # pragma: no cover - TOML numbers always convert
        raise clinical.KnowledgeError(f"{where}: not a number: {value!r}") from exc


def _number(value: Any, *, where: str) -> Decimal | None:
    return _numbers(value, where=where)[0] if value is not None else None


#: The keys a `[[option]]` of plan_options.toml may hold (documented at the file's top).
_OPTION_KEYS = frozenset(
    {
        "id", "problem", "text", "rule", "cite", "decision", "held",
        "result", "above", "below", "at_least", "unit", "out_of_range",
        "rise_at_least", "within_days", "due_months",
        "with_problem", "without_problem",
        "classes_present", "classes_absent", "ingredients_present", "names_present",
        "min_age", "max_age", "pregnant", "not_pregnant", "unless_changed_since", "changed_since",
        "score", "score_at_least", "guard",
        "show_treatment", "say_absent", "say_age", "proposes",
    }
)  # fmt: skip


def _ids(item: Mapping[str, Any], key: str) -> frozenset[str]:
    return frozenset(str(v) for v in item.get(key, []))


@lru_cache(maxsize=8)
def _load(extra_dirs: tuple[Path, ...]) -> Knowledge:
    sets = clinical.value_sets(extra_dirs)
    known = {*sets, BLOOD_PRESSURE}
    problems: dict[str, ProblemSpec] = {}
    for path, item in clinical.entries("assessment", "problem", extra_dirs):
        where = f"{path} problem {item.get('group')!r}"
        results = tuple(str(r) for r in item.get("results", []))
        for result_id in results:
            if result_id not in known:
                raise clinical.KnowledgeError(f"{where}: no value set {result_id!r}")
        problems[str(item.get("group"))] = ProblemSpec(
            group=str(item.get("group")),
            results=results,
            classes=_ids(item, "classes"),
            cite=clinical.source(item.get("cite"), where=where),
        )
    goals: dict[str, tuple[Goal, ...]] = {}
    problem_goals: list[Goal] = []
    for path, item in clinical.entries("assessment", "goal", extra_dirs):
        where = f"{path} goal {item.get('result')!r}"
        below, at_most = item.get("below"), item.get("at_most")
        goal = Goal(
            result=str(item.get("result")),
            low=_numbers(item.get("at_least"), where=where),
            high=_numbers(below if below is not None else at_most, where=where),
            high_inclusive=below is None,
            unit=str(item["unit"]) if item.get("unit") else None,
            text=str(item.get("text", "")),
            cite=clinical.source(item.get("cite"), where=where),
            words={str(k): str(v) for k, v in (item.get("words") or {}).items()},
            categories=tuple(
                Category(
                    label=str(c["label"]),
                    at_least=_number(c.get("at_least"), where=where),
                    above=_number(c.get("above"), where=where),
                )
                for c in item.get("category", [])
            ),
            category_in_head=bool(item.get("category_in_head", True)),
            min_age=int(item["min_age"]) if item.get("min_age") is not None else None,
            max_age=int(item["max_age"]) if item.get("max_age") is not None else None,
            with_problem=_ids(item, "with_problem"),
            pregnant=bool(item.get("pregnant", False)),
        )
        if goal.with_problem:
            problem_goals.append(goal)
        else:
            goals[goal.result] = (*goals.get(goal.result, ()), goal)
    options: list[PlanOption] = []
    for path, item in clinical.entries("plan_options", "option", extra_dirs):
        where = f"{path} option {item.get('id')!r}"
        if not item.get("id") or not item.get("problem") or not item.get("text"):
            raise clinical.KnowledgeError(f"{where}: needs id, problem and text")
        unknown = sorted(set(item) - _OPTION_KEYS)
        if unknown:
            # A misspelt condition ("without_problems") would otherwise be dropped silently
            # and the option offered to patients the reviewer meant to leave out.
            raise clinical.KnowledgeError(f"{where}: unknown key {unknown[0]!r}")
        result = str(item["result"]) if item.get("result") else None
        if result is not None and result not in known:
            raise clinical.KnowledgeError(f"{where}: no value set {result!r}")
        rise = item.get("rise_at_least")
        options.append(
            PlanOption(
                id=str(item["id"]),
                problem=str(item["problem"]),
                text=str(item["text"]),
                rule=str(item.get("rule", "")),
                cite=clinical.source(item.get("cite"), where=where),
                result=result,
                above=_numbers(item.get("above"), where=where),
                below=_numbers(item.get("below"), where=where),
                at_least=_numbers(item.get("at_least"), where=where),
                unit=str(item["unit"]) if item.get("unit") else None,
                out_of_range=str(item["out_of_range"]) if item.get("out_of_range") else None,
                rise_at_least=Decimal(str(rise)) if rise is not None else None,
                within_days=int(item["within_days"]) if item.get("within_days") else None,
                due_months=int(item["due_months"]) if item.get("due_months") else None,
                with_problem=_ids(item, "with_problem"),
                without_problem=_ids(item, "without_problem"),
                classes_present=_ids(item, "classes_present"),
                classes_absent=_ids(item, "classes_absent"),
                ingredients_present=_ids(item, "ingredients_present"),
                names_present=frozenset(str(w).lower() for w in item.get("names_present", [])),
                decision=str(item.get("decision") or item["id"]),
                min_age=int(item["min_age"]) if item.get("min_age") is not None else None,
                max_age=int(item["max_age"]) if item.get("max_age") is not None else None,
                show_treatment=bool(item.get("show_treatment")),
                pregnant=bool(item.get("pregnant")),
                not_pregnant=bool(item.get("not_pregnant")),
                unless_changed_since=bool(item.get("unless_changed_since")),
                changed_since=bool(item.get("changed_since")),
                score=str(item["score"]) if item.get("score") else None,
                score_at_least={
                    str(k): int(v) for k, v in (item.get("score_at_least") or {}).items()
                },
                guard=tuple(str(g) for g in item.get("guard", [])),
                say_absent=bool(item.get("say_absent")),
                say_age=bool(item.get("say_age", True)),
                held=str(item.get("held") or ""),
                proposes=tuple(str(n) for n in item.get("proposes", [])),
            )
        )
        for group in options[-1].guard:
            if group not in sets:
                raise clinical.KnowledgeError(f"{where}: guard {group!r} is no value set")
        if options[-1].score is not None:
            if options[-1].score not in {sc.id for sc in risk_scores.scores(extra_dirs)}:
                raise clinical.KnowledgeError(f"{where}: no risk score {options[-1].score!r}")
            if "male" not in options[-1].score_at_least:
                raise clinical.KnowledgeError(f"{where}: score_at_least needs male = …")
    decisions: dict[str, Decision] = {}
    for path, item in clinical.entries("plan_options", "decision", extra_dirs):
        where = f"{path} decision {item.get('id')!r}"
        if not item.get("id") or not item.get("home") or not item.get("label"):
            raise clinical.KnowledgeError(f"{where}: needs id, home and label")
        decisions[str(item["id"])] = Decision(
            id=str(item["id"]),
            home=str(item["home"]),
            label=str(item["label"]),
            cite=clinical.source(item.get("cite"), where=where),
        )
    return Knowledge(
        problems=problems,
        goals=goals,
        problem_goals=tuple(problem_goals),
        options=tuple(options),
        value_sets=sets,
        decisions=decisions,
    )


def knowledge(extra_dirs: Iterable[Path] = ()) -> Knowledge:
    return _load(tuple(extra_dirs))


# -- reading the chart -------------------------------------------------------------------


def _cite(snapshot: ChartSnapshot, resources: Iterable[FHIRResource]) -> tuple[Citation, ...]:
    seen: dict[str, Citation] = {}
    for resource in resources:
        reference = f"{resource.get('resourceType')}/{resource.get('id')}"
        seen.setdefault(
            reference, Citation(reference=reference, display=describe(resource, snapshot))
        )
    return tuple(seen.values())


def _on(when: str | None) -> str:
    return f" on {when}" if when else ""


def _months_before(day: date, months: int) -> date:
    index = day.year * 12 + (day.month - 1) - months
    year, month = divmod(index, 12)
    for candidate in (day.day, 30, 29, 28):
        try:
            return date(year, month + 1, candidate)
        except ValueError:
            continue
    raise AssertionError("unreachable")  # pragma: no cover


def _results(facts: ChartFacts, vs: clinical.ValueSet) -> list[Result]:
    return facts.results_for(vs.code_keys(clinical.LOINC))


def _unit_ok(wanted: str | None, unit: str | None) -> bool:
    return wanted is None or canonical_unit(wanted) == canonical_unit(unit)


def _values(reading: Result | BloodPressure) -> tuple[Decimal | None, ...]:
    if isinstance(reading, BloodPressure):
        return (reading.systolic.number, reading.diastolic.number)
    return (reading.value.number,)


def _unit(reading: Result | BloodPressure) -> str | None:
    if isinstance(reading, BloodPressure):
        return reading.systolic.unit or reading.diastolic.unit
    return reading.value.unit


@dataclass(frozen=True, kw_only=True)
class Conversion:
    """A result's value in one unit from another that is not a fixed factor of it."""

    result: str
    source: str
    target: str
    slope: Decimal
    intercept: Decimal
    cite: clinical.Source


@lru_cache(maxsize=1)
def conversions() -> tuple[Conversion, ...]:
    found: list[Conversion] = []
    for path, item in clinical.entries("conversions", "conversion"):
        where = f"{path} conversion {item.get('result')!r}"
        try:
            found.append(
                Conversion(
                    result=str(item["result"]),
                    source=str(item["from"]),
                    target=str(item["to"]),
                    slope=Decimal(str(item["slope"])),
                    intercept=Decimal(str(item.get("intercept", 0))),
                    cite=clinical.source(item.get("cite"), where=where),
                )
            )
        except KeyError as exc:
            raise clinical.KnowledgeError(f"{where}: needs {exc.args[0]}") from exc
    return tuple(found)


def values_in(
    result_id: str | None, reading: Result | BloodPressure, wanted: str | None
) -> tuple[Decimal | None, ...] | None:
    """The reading's values in `wanted` (a goal's or rule's unit): as they are when the
    units agree, converted when UCUM can (lb to kg) or a cited conversion can (IFCC HbA1c
    to %), None when they do not compare."""
    unit = _unit(reading)
    if _unit_ok(wanted, unit):
        return _values(reading)
    if wanted is None or unit is None or isinstance(reading, BloodPressure):
        return None
    value = reading.value.number
    if value is None:
        return None
    unit = reading.value.ucum or unit
    if _unit_ok(wanted, unit) or units.same_unit(unit, wanted):
        return (value,)
    for conversion in conversions():  # a cited conversion for this test comes first
        if (
            conversion.result == result_id
            and _unit_ok(conversion.source, unit)
            and _unit_ok(conversion.target, wanted)
        ):
            return (conversion.slope * value + conversion.intercept,)
    if units.dimensionless(unit) or units.dimensionless(wanted):
        # mmol/mol and % are both "ratios" to UCUM, yet 69 mmol/mol of HbA1c is 8.5%, not
        # 6.9%: ratios of different things never convert by their factor.
        return None
    converted = units.convert(float(value), unit, wanted)
    return (Decimal(str(round(converted, 6))),) if converted is not None else None


def _any_at_least(values: Sequence[Decimal | None], bounds: Sequence[Decimal]) -> bool:
    return any(v is not None and v >= b for v, b in zip(values, bounds, strict=False))


def _any_above(values: Sequence[Decimal | None], bounds: Sequence[Decimal]) -> bool:
    return any(v is not None and v > b for v, b in zip(values, bounds, strict=False))


def _any_below(values: Sequence[Decimal | None], bounds: Sequence[Decimal]) -> bool:
    return any(v is not None and v < b for v, b in zip(values, bounds, strict=False))


def goal_status(goal: Goal, reading: Result | BloodPressure) -> str | None:
    """ "at goal", "above goal", "below goal", or None when the units do not compare."""
    values = values_in(goal.result, reading, goal.unit)
    if values is None or any(v is None for v in values):
        return None
    if goal.high:
        over = (
            _any_above(values, goal.high)
            if goal.high_inclusive
            else _any_at_least(values, goal.high)
        )
        if over:
            return "above goal"
    if goal.low and _any_below(values, goal.low):
        return "below goal"
    return "at goal"


def goal_for(facts: ChartFacts, kb: Knowledge, result_id: str) -> Goal | None:
    """The result's goal for this patient: a goal for one of the patient's problems first,
    else the first of the result's general goals whose ages hold (a goal with an age bound
    needs the patient's age: a child's LDL is read by NHLBI's categories, not the adult
    goal; under 2 there is none). In pregnancy a goal for pregnancy comes first."""
    if facts.context.pregnant and not facts.deceased:
        for goal in kb.goals.get(result_id, ()):
            if goal.pregnant:
                return goal
    for goal in kb.problem_goals:
        if goal.result == result_id and any(facts.has_group(p) for p in goal.with_problem):
            return goal
    for goal in kb.goals.get(result_id, ()):
        if not goal.pregnant and _ages_hold(goal, facts):
            return goal
    return None


def _ages_hold(goal: Goal, facts: ChartFacts) -> bool:
    if goal.min_age is None and goal.max_age is None:
        return True
    age = facts.age
    if age is None:
        return False
    return (goal.min_age is None or age >= goal.min_age) and (
        goal.max_age is None or age <= goal.max_age
    )


def range_status(facts: ChartFacts, result: Result) -> tuple[str | None, str | None]:
    """The verdict of the lab's own reference range, else of the cited default table (a
    feed that sends no range must not make a potassium of 5.6 read as unremarkable), and
    for the default table the range and its source (for `Statement.rule`)."""
    check = reference_range_check(result.resource, result.value)
    if check is not None:
        # The range is the lab's, on the result itself: the note says which side of it the
        # value is; the range goes with the rule, for the reviewer (not restated in text).
        return f"{check.direction} range", f"reference range {check.range_text}"
    if result.resource.get("referenceRange"):
        return "normal", None  # within the lab's own reference range
    found = _default_range(facts, result)
    if found is None:
        return None, None
    default_check, default = found
    return (
        f"{default_check.direction} the default reference range",
        f"default reference range {default_check.range_text} ({default.cite.label})",
    )


def _default_range(facts: ChartFacts, result: Result) -> tuple[RangeCheck, DefaultRange] | None:
    if result.resource.get("interpretation"):
        return None  # the lab flagged (or chose not to flag) it: its word stands
    gender = facts.snapshot.patient.get("gender")
    return default_range_check(
        result.resource, result.value, sex=gender if isinstance(gender, str) else None
    )


def _out_of_range(facts: ChartFacts, result: Result) -> str | None:
    """'above' or 'below' by the lab's own range, else by the default table."""
    check = reference_range_check(result.resource, result.value)
    if check is not None:
        return check.direction
    if result.resource.get("referenceRange"):
        return None
    found = _default_range(facts, result)
    return found[0].direction if found else None


@dataclass(frozen=True, kw_only=True)
class _Series:
    """One result type for one problem: newest first, and how to name it."""

    id: str
    readings: Sequence[Result | BloodPressure]

    @property
    def latest(self) -> Result | BloodPressure:
        return self.readings[0]


def _series(facts: ChartFacts, kb: Knowledge, result_id: str) -> _Series | None:
    if result_id == BLOOD_PRESSURE:
        readings: Sequence[Result | BloodPressure] = facts.blood_pressures
    else:
        vs = kb.value_sets.get(result_id)
        readings = _results(facts, vs) if vs else []
    return _Series(id=result_id, readings=readings) if readings else None


def _name(reading: Result | BloodPressure) -> str:
    return "BP" if isinstance(reading, BloodPressure) else reading.name


def _text(reading: Result | BloodPressure) -> str:
    if isinstance(reading, BloodPressure):
        return reading.text()
    if (reading.value.unit or "").startswith("{"):  # UCUM annotation only, e.g. {INR}
        return reading.value.text().split(" ")[0]
    return reading.value_text()


def _earlier_text(latest: Result | BloodPressure, earlier: Result | BloodPressure) -> str:
    """The earlier value without its unit when the latest just named the same one ("eGFR
    48 mL/min/1.73 m2, down from 54"); with it when they differ (57 mmol/mol vs 8.2%)."""
    if isinstance(latest, BloodPressure) or isinstance(earlier, BloodPressure):
        return _text(earlier)  # "148/86" alone reads as a ratio to the grounding verifier
    now, then = _text(latest), _text(earlier)
    unit_now, unit_then = now.partition(" ")[2], then.partition(" ")[2]
    return then.partition(" ")[0] if unit_then and unit_then == unit_now else then


def _resources(reading: Result | BloodPressure) -> tuple[FHIRResource, ...]:
    if isinstance(reading, BloodPressure):
        return reading.resources
    return (reading.resource,)


def _direction(latest: Result | BloodPressure, earlier: Result | BloodPressure) -> str | None:
    if isinstance(latest, BloodPressure) or isinstance(earlier, BloodPressure):
        a, b = _values(latest)[0], _values(earlier)[0]
    else:
        # In one unit: as sent, through UCUM, or a cited conversion (57 mmol/mol vs 8.2 %).
        a, b = in_one_unit(latest, earlier)
    if a is None or b is None:
        return None
    return "up" if a > b else "down" if a < b else "unchanged"


def in_one_unit(latest: Result, earlier: Result) -> tuple[Decimal | None, Decimal | None]:
    """Both values in the latest's unit, else both in the earlier's (conversions go one way)."""
    converted = values_in(latest.test, earlier, latest.value.ucum or latest.value.unit)
    if converted:
        return latest.value.number, converted[0]
    converted = values_in(earlier.test, latest, earlier.value.ucum or earlier.value.unit)
    if converted:
        return converted[0], earlier.value.number
    return None, None


#: In heart failure a weight trend is about fluid, over days: the last two weeks, not a year
#: (a year's trend from an old, heavier weight reads "down" through a 3 kg gain this week).
HF_WEIGHT_DAYS = 14


def _window_start(
    series: _Series, as_of: date, *, heart_failure: bool = False
) -> Result | BloodPressure | None:
    """The oldest reading within the trend window (not the latest itself)."""
    start = _months_before(as_of, TREND_MONTHS)
    if heart_failure and series.id == "body_weight":
        latest = to_date(series.latest.when)
        if latest is not None:
            start = latest - timedelta(days=HF_WEIGHT_DAYS)
    inside = [r for r in series.readings[1:] if (to_date(r.when) or date.min) >= start]
    return inside[-1] if inside else None


def _result_statement(
    facts: ChartFacts, kb: Knowledge, series: _Series
) -> tuple[Statement, str | None]:
    """'HbA1c 8.4% on 2026-10-01, up from 7.6% on 2026-04-02; above goal' and the status."""
    latest = series.latest
    text = f"{capitalize(_name(latest))} {_text(latest)}{_on(latest.date)}"
    if isinstance(latest, Result):
        text += age_note(latest, facts.as_of)
    cited = list(_resources(latest))
    earlier = _window_start(series, facts.as_of, heart_failure=facts.has_group("heart_failure"))
    if earlier is not None:
        direction = _direction(latest, earlier)
        before = _earlier_text(latest, earlier)
        if direction == "unchanged":
            text += f", unchanged since {before}{_on(earlier.date)}"
        elif direction:
            text += f", {direction} from {before}{_on(earlier.date)}"
        cited += _resources(earlier)
    goal = goal_for(facts, kb, series.id)
    status: str | None = None
    rule: str | None = None
    if not facts.newest_known("Observation"):
        # Not "at goal" or "above goal" from a reading that may not be the latest.
        return Statement(text=text, citations=_cite(facts.snapshot, cited)), None
    if goal is not None:
        verdict = goal_status(goal, latest)
        status = goal.words.get(verdict, verdict) if verdict else None
        if status:
            rule = f"{goal.cite.label}: {goal.text}"
            # The category is what a clinician writes of an abnormal result ("G3a"); beside
            # a normal one ("not reduced (G1)") it is noise.
            label = category_of(goal, latest) if verdict != "at goal" else None
            if label:
                status += f" ({label})"
    if status is None and isinstance(latest, Result):
        status, rule = range_status(facts, latest)
    if status:
        text += f"; {status}"
    return Statement(text=text, citations=_cite(facts.snapshot, cited), rule=rule), status


def _stopped_orders(facts: ChartFacts, classes: frozenset[str]) -> list[tuple[str, FHIRResource]]:
    """Stopped orders of these classes whose ingredient is not on the current list."""
    current = {name for m in facts.medications for name in m.ingredients}
    out: list[tuple[str, FHIRResource]] = []
    for mr in facts.snapshot.of_type("MedicationRequest"):
        if not mr.get("id") or mr.get("status") not in _STOPPED:
            continue
        concept, _ = medication_concept(mr, facts.snapshot)
        if concept is None:
            continue
        found, ingredients = drug_classes(concept)
        if not any(c.id in classes for c in found) or set(ingredients) & current:
            continue
        name = ingredients[0] if ingredients else concept_text(concept)
        text = f"{name} {mr['status']}"
        ended = date_part(
            ((mr.get("dispenseRequest") or {}).get("validityPeriod") or {}).get("end")
        )
        if ended:
            text += f" {ended}"
        reason = concept_text(mr.get("statusReason"))
        if reason:
            text += f" ({reason.lower()})"
        out.append((text, mr))
    return out


def _note_name(med: Medication) -> str:
    """The name as a note writes it ("metformin 1000 mg"; medication_names.toml)."""
    return MEDICATION_NAMES.note_name(med.name, med.ingredients)


def _med_phrase(med: Medication, as_of: date) -> str:
    name = _note_name(med)
    if med.reported:
        return f"{name} ({med.source_phrase}; not an order)"
    # A recent order is news for the plan ("empagliflozin, ordered 2026-10-25"); a
    # long-standing one's date is on the medication card.
    authored = to_date(med.authored)
    recent = authored is not None and authored >= _months_before(as_of, TREND_MONTHS)
    ordered = f"ordered {med.authored}" if med.authored and recent else ""
    if med.on_hold:
        ordered = f"{ordered}, on hold" if ordered else "on hold"
    return f"{name} ({ordered})" if ordered else name


# -- the block for one problem -----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Block:
    problem: Problem
    statements: tuple[Statement, ...]


def _option_fires(
    facts: ChartFacts,
    kb: Knowledge,
    option: PlanOption,
    meds: Sequence[Medication],
    problem: Problem,
    stated: frozenset[str] = frozenset(),
) -> tuple[str, list[FHIRResource]] | None:
    """Why the option applies (a phrase and what to cite), or None. What the block has
    already stated (`stated`: resource references, "score:<id>") is cited, not repeated."""
    cited: list[FHIRResource] = []
    reasons: list[str] = []
    if option.not_pregnant and facts.context.pregnant:
        return None
    if option.pregnant:
        if not facts.context.pregnant or facts.deceased:
            return None
        evidence = facts.context.pregnancy[0]
        reasons.append(f"with {concept_text(evidence.get('code')) or 'pregnancy'}")
        cited.append(evidence)
    if option.min_age is not None or option.max_age is not None:
        age = facts.age
        if age is None or facts.deceased:
            return None
        if (option.min_age is not None and age < option.min_age) or (
            option.max_age is not None and age > option.max_age
        ):
            return None
        if option.say_age:
            reasons.append(f"age {age}")
        cited.append(facts.snapshot.patient)
    if option.without_problem and any(p.group_ids & option.without_problem for p in facts.problems):
        return None
    if option.with_problem and not problem.group_ids & option.with_problem:
        # (A problem in both groups, e.g. diabetes with diabetic CKD, says it itself.)
        others = [p for p in facts.problems if p.group_ids & option.with_problem]
        if not others:
            return None
        reasons.append(f"with {others[0].name}")
        cited.append(others[0].condition)
    classes_on = {c.id for m in facts.medications for c in m.classes}
    if option.classes_present:
        on = [m for m in facts.medications if {c.id for c in m.classes} & option.classes_present]
        if not on:
            return None
        names = dict.fromkeys(m.ingredients[0] if m.ingredients else m.name for m in on)
        if not _all_stated(on, stated):
            reasons.append("on " + ", ".join(names))
        cited += [m.request for m in on]
    if option.ingredients_present:
        on = [m for m in facts.medications if set(m.ingredients) & option.ingredients_present]
        if not on:
            return None
        if not option.classes_present:
            if not _all_stated(on, stated):
                reasons.append("on " + ", ".join(sorted(set(on[0].ingredients))))
            cited += [m.request for m in on]
    if option.names_present:
        on = [
            m
            for m in facts.medications
            if any(_has_phrase(m.name.lower(), w) for w in option.names_present)
        ]
        if not on:
            return None
        if not _all_stated(on, stated):
            reasons.append("on " + ", ".join(dict.fromkeys(_note_name(m) for m in on)))
        cited += [m.request for m in on]
    if option.classes_absent:
        if not facts.complete("MedicationRequest") or classes_on & option.classes_absent:
            return None
        if option.say_absent or option.min_age is not None or option.max_age is not None:
            # Age alone reads as the reason; say that the drug is not on the list either.
            labels = [c.label for c in DRUG_CLASSES if c.id in option.classes_absent]
            reasons.append("no " + " or ".join(labels) + " on the medication list")
    if option.guard:
        guarded = _guard(facts, option.guard)
        if guarded is None or not guarded.known:
            return None
        shown = [r for r in guarded.read if _ref(r.resource) not in stated]
        if shown:
            reasons.append(", ".join(f"{r.name} {_text(r)}{_on(r.date)}" for r in shown))
        cited += [r.resource for r in guarded.read]
    if option.score is not None:
        result = risk_scores.by_id(facts, option.score)
        if result is None:
            return None
        gender = facts.snapshot.patient.get("gender")
        wanted = option.score_at_least.get(str(gender), option.score_at_least["male"])
        if result.total < wanted:
            return None  # also when only a lower bound is known: it may be higher, or not
        if f"score:{result.score.id}" not in stated:
            reasons.append(f"{result.score.title} {result.total_words}")
        cited += result.resources
        if option.classes_absent:
            labels = [c.label for c in DRUG_CLASSES if c.id in option.classes_absent]
            reasons.append("no " + " or ".join(labels) + " on the medication list")
    if option.result is not None:
        if not facts.newest_known("Observation"):
            return None  # the latest result may be one the app did not read
        series = _series(facts, kb, option.result)
        if option.due_months is not None:
            if series is None:
                if not facts.complete("Observation"):
                    return None
                return "none on file", cited
            last = series.latest
            when = to_date(last.when)
            if when is not None and when >= _months_before(facts.as_of, option.due_months):
                return None
            if {_ref(r) for r in _resources(last)} <= stated:
                return "", cited + list(_resources(last))  # its date is on the line above
            return f"last{_on(last.date)}", cited + list(_resources(last))
        if series is None:
            return None
        latest = series.latest
        if option.unless_changed_since and _changed_after(facts, meds, latest):
            return None
        in_unit = values_in(option.result, latest, option.unit)
        if in_unit is None:
            return None
        values = in_unit
        if option.at_least and not _any_at_least(values, option.at_least):
            return None
        if option.above and not _any_above(values, option.above):
            return None
        if option.below and not _any_below(values, option.below):
            return None
        if option.out_of_range is not None:
            if not isinstance(latest, Result):
                return None
            if _out_of_range(facts, latest) != option.out_of_range:
                return None
        if option.changed_since:
            changed = [
                m
                for m in meds
                if ordered_since(facts, m, latest)
                and (
                    not option.classes_present or {c.id for c in m.classes} & option.classes_present
                )
            ]
            if not changed:
                return None
            first = min(changed, key=lambda m: m.authored or "")
            drug, noun = _note_name(first), _name(latest)
            noun = noun if noun.isupper() else noun.lower()
            if latest.date == first.authored:  # both timed, the order the later
                reasons.append(f"last {noun} before {drug} was ordered ({first.authored})")
            else:
                reasons.append(
                    f"last {noun} {latest.date}, before {drug} was ordered {first.authored}"
                )
            cited += [first.request, *_resources(latest)]
            return "; ".join(reasons), cited
        phrase = f"{_name(latest)} {_text(latest)}{_on(latest.date)}"
        shown_here = {_ref(r) for r in _resources(latest)}
        cited += _resources(latest)
        if option.rise_at_least is not None:
            earlier = _rise(series, option)
            if earlier is None:
                return None
            phrase += f", up from {_text(earlier)}{_on(earlier.date)}"
            shown_here |= {_ref(r) for r in _resources(earlier)}
            cited += _resources(earlier)
        if not shown_here <= stated:  # else the result line above says it, with its date
            reasons.insert(0, phrase)
    if option.show_treatment:
        if meds:
            treating = sorted({m.ingredients[0] if m.ingredients else m.name for m in meds})
            alone = " alone" if len(treating) == 1 else ""
            reasons.append("on " + " and ".join(treating) + alone)
            cited += [m.request for m in meds]
        elif facts.complete("MedicationRequest"):
            reasons.append("no medication for it on the list")
    return "; ".join(reasons), cited


@dataclass(frozen=True)
class _Guarded:
    """What the contraindication rules guarding an option read: the latest results that
    are current (`read`), and the results they need (value set ids, in the rules' order)
    that are not on file (`missing`) or whose latest is older than its test's staleness
    window (`stale`)."""

    read: tuple[Result, ...] = ()
    missing: tuple[str, ...] = ()
    stale: Mapping[str, Result] = field(default_factory=dict)
    needed: tuple[str, ...] = ()

    @property
    def known(self) -> bool:
        """Every result the rules read is on file and current: the option may be judged."""
        return not self.missing and not self.stale


def _guard(facts: ChartFacts, groups: Iterable[str]) -> _Guarded | None:
    """What the guarding contraindication rules read, or None when one of them (or an
    allergy or interaction rule of the group, `safety.contraindicated`) holds. A
    result they read that is not on file, or older than its test's `stale_months`, leaves
    the option not known to be safe (`_Guarded.known`)."""
    read: dict[str, Result] = {}
    needed: dict[str, Result | None] = {}
    for group in groups:
        if safety.contraindicated(facts, group):
            return None
        for rule in safety.rules():
            if rule.kind != "contraindication" or rule.groups[0] != group or not rule.result:
                continue
            vs = clinical.value_set(rule.result)
            latest = facts.latest(vs.code_keys(clinical.LOINC))
            needed.setdefault(rule.result, latest)
            if latest is not None and not age_note(latest, facts.as_of):
                read.setdefault(latest.reference, latest)
    return _Guarded(
        read=tuple(read.values()),
        missing=tuple(v for v, r in needed.items() if r is None),
        stale={v: r for v, r in needed.items() if r is not None and r.reference not in read},
        needed=tuple(needed),
    )


def _held(
    facts: ChartFacts,
    kb: Knowledge,
    option: PlanOption,
    meds: Sequence[Medication],
    problem: Problem,
    stated: frozenset[str] = frozenset(),
) -> Statement | _Check | None:
    """What a clinician looking for a guarded option (`held` names what it adds) reads in
    its place when the option would fire but for its guard, so that the pillar is not
    silently missing: the contraindication of the safety tables that holds ("A
    mineralocorticoid receptor antagonist is not suggested: potassium 5.2 mmol/L on
    2026-11-09"), else the results its rules need that are not on file or not current
    ("Check potassium and eGFR before a mineralocorticoid receptor antagonist: none on
    file")."""
    if not option.held or not option.guard:
        return None
    if _fires(facts, kb, replace(option, guard=()), meds, problem) is None:
        return None
    holding = [h for group in option.guard for h in safety.contraindicated(facts, group)]
    if not holding:
        return _unknown(facts, option, problem, stated)
    rule, resource = holding[0]
    reading = next(
        (r for series in facts.results.values() for r in series if r.resource is resource), None
    )
    why = (
        f"{reading.name} {_text(reading)}{_on(reading.date)}{age_note(reading, facts.as_of)}"
        if reading is not None
        else safety.holding_phrase(facts, rule, resource)
        or concept_text(resource.get("code"))
        or "see the safety check"
    )
    return Statement(
        text=f"{option.held[:1].upper()}{option.held[1:]} is not suggested: {why}",
        citations=_cite(facts.snapshot, [problem.condition, resource]),
        rule=rule.label,
    )


def _result_word(value_set_id: str) -> str:
    """How a note names a value set's result: "potassium", "eGFR" (an acronym kept)."""
    title = clinical.value_set(value_set_id).title
    return title if any(c.isupper() for c in title[1:]) else title.lower()


@dataclass(frozen=True)
class _Check:
    """ "Check potassium and eGFR before a mineralocorticoid receptor antagonist: none on
    file": what to check (`names`), before what (`held`), why, what to cite and the rule.
    Several in one block with the same `why` are one line (`_merge_checks`)."""

    names: tuple[str, ...]
    held: str
    why: str
    citations: tuple[FHIRResource, ...]
    rule: str

    def statement(self, snapshot: ChartSnapshot) -> Statement:
        return Statement(
            text=f"Check {_and(self.names)} before {self.held}: {self.why}",
            citations=_cite(snapshot, list(self.citations)),
            rule=self.rule,
        )


def _and(names: Sequence[str]) -> str:
    if len(names) < 3:
        return " and ".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _unknown(
    facts: ChartFacts, option: PlanOption, problem: Problem, stated: frozenset[str]
) -> _Check | None:
    """ "Check potassium and eGFR before a mineralocorticoid receptor antagonist: none on
    file" when the option's guard cannot be judged: a result its rules read is not on file,
    or its latest is older than its test's staleness window (cited, with its date and age:
    "last on 2023-05-02 (42 months old)")."""
    guarded = _guard(facts, option.guard)
    if guarded is None or guarded.known:
        return None
    wanted = [v for v in guarded.needed if v in guarded.missing or v in guarded.stale]
    names = tuple(_result_word(v) for v in wanted)
    absent = "on file" if facts.complete("Observation") else "among the results read"
    old = list(guarded.stale.values())
    if not old:
        why = f"none {absent}"
    elif (
        not guarded.missing
        and len({r.date for r in old}) == 1
        and all(r.reference in stated for r in old)
    ):
        # The results are on the lines above: their date and age say why.
        why = f"last{_on(old[0].date)}{age_note(old[0], facts.as_of)}"
    else:
        parts = []
        for v in wanted:
            r = guarded.stale.get(v)
            if r is None:
                parts.append(f"no {_result_word(v)} {absent}")
            elif r.reference in stated:
                parts.append(f"{_result_word(v)} last{_on(r.date)}{age_note(r, facts.as_of)}")
            else:
                parts.append(f"{r.name} {_text(r)}{_on(r.date)}{age_note(r, facts.as_of)}")
        why = "; ".join(parts)
    return _Check(
        names=names,
        held=option.held,
        why=why,
        citations=(problem.condition, *(r.resource for r in old)),
        rule=f"{option.cite.label}: {option.rule}" if option.rule else option.cite.label,
    )


def _merge_checks(
    snapshot: ChartSnapshot, statements: list[Statement], checks: Sequence[tuple[int, _Check]]
) -> list[Statement]:
    """The block's "Check … before …" lines with the same reason as one line, where the
    first stood: "Check eGFR and potassium before an SGLT2 inhibitor; an ARNI, ACE
    inhibitor or ARB; or a mineralocorticoid receptor antagonist: none on file"."""
    by_why: dict[str, list[tuple[int, _Check]]] = {}
    for position, check in checks:
        by_why.setdefault(check.why, []).append((position, check))
    replaced: dict[int, Statement | None] = {}
    for group in by_why.values():
        if len(group) < 2:
            continue
        names = tuple(dict.fromkeys(n for _, c in group for n in c.names))
        helds = [c.held for _, c in group]
        # "an ARNI, ACE inhibitor or ARB" has commas of its own: then semicolons between.
        comma = "; " if any("," in h for h in helds) else ", "
        held = comma.join(helds[:-1]) + (
            f" or {helds[-1]}"
            if len(helds) == 2 and comma == ", "
            else f"{comma.strip()} or {helds[-1]}"
        )
        citations = tuple({id(r): r for _, c in group for r in c.citations}.values())
        merged = _Check(
            names=names,
            held=held,
            why=group[0][1].why,
            citations=citations,
            rule="; ".join(dict.fromkeys(c.rule for _, c in group)),
        )
        replaced[group[0][0]] = merged.statement(snapshot)
        for position, _ in group[1:]:
            replaced[position] = None
    out: list[Statement] = []
    for index, statement in enumerate(statements):
        if index not in replaced:
            out.append(statement)
        elif (merged_statement := replaced[index]) is not None:
            out.append(merged_statement)
    return out


def _has_phrase(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![a-z]){re.escape(phrase)}(?![a-z])", text) is not None


def _all_stated(meds: Iterable[Medication], stated: frozenset[str]) -> bool:
    return all(m.reference in stated for m in meds)


def _changed_after(
    facts: ChartFacts, meds: Sequence[Medication], reading: Result | BloodPressure
) -> bool:
    """True when one of the medications was started or changed after the reading was taken."""
    return any(ordered_since(facts, m, reading) for m in meds)


def ordered_since(facts: ChartFacts, med: Medication, reading: Result | BloodPressure) -> bool:
    """The medication was started or changed after the reading: ordered on a later day, or
    later the same day when both carry a time (empagliflozin ordered at 16:05 after the
    09:30 HbA1c). An order dated the reading's own day without a time cannot be told from
    a renewal written at that visit, so it is not taken as a change (the option stays).
    A renewal of an earlier order of the same product is no change, whenever written."""
    if med.reference in facts.renewals:
        return False
    authored = med.request.get("authoredOn")
    taken, ordered = parse_when(reading.when), parse_when(authored)
    if taken is None or ordered is None:
        return False
    if "T" in str(reading.when) and "T" in str(authored):
        return ordered > taken
    return ordered.date() > taken.date()


def _rise(series: _Series, option: PlanOption) -> Result | BloodPressure | None:
    """The earlier reading the latest rose from by `rise_at_least` within `within_days`."""
    latest = series.latest
    end = to_date(latest.when)
    now = values_in(option.result, latest, option.unit)
    value = now[0] if now else None
    if end is None or value is None or option.rise_at_least is None:
        return None
    start = end - timedelta(days=option.within_days or 7)
    for earlier in series.readings[1:]:
        when = to_date(earlier.when)
        if when is None or when < start:
            break
        then = values_in(option.result, earlier, option.unit)
        old = then[0] if then else None
        if old is not None and value - old >= option.rise_at_least:
            return earlier
    return None


@dataclass
class _Shown:
    """What earlier blocks already said: results, medications (by order) and options."""

    results: dict[str, Problem] = field(default_factory=dict)  # latest result → its block
    medications: dict[str, Problem] = field(default_factory=dict)  # order → its block
    stopped: set[str] = field(default_factory=set)
    options: set[str] = field(default_factory=set)


def _treating(facts: ChartFacts, classes: frozenset[str]) -> list[Medication]:
    return [m for m in facts.medications if {c.id for c in m.classes} & classes]


def _short(med: Medication) -> str:
    return med.ingredients[0] if len(med.ingredients) == 1 else med.name


def _home(facts: ChartFacts, kb: Knowledge, decision_id: str) -> Problem | None:
    """The block a `[[decision]]` is offered in: its home problem's when the patient has
    one, else the problem of its first option (in file order) that fires, so that which
    option is offered does not depend on the order of the blocks (a high-intensity statin
    for coronary disease before diabetes' moderate-intensity one)."""
    decision = kb.decisions.get(decision_id)
    if decision is None:
        return None
    homes = facts.problems_in(decision.home)
    if homes:
        return homes[0]
    for option in kb.options:
        if option.decision != decision_id:
            continue
        for problem in facts.problems_in(option.problem):
            if _fires(facts, kb, option, [], problem) is not None:
                return problem
    return None


def _options_for(
    facts: ChartFacts, kb: Knowledge, problem: Problem
) -> list[tuple[PlanOption, Problem]]:
    """The options this block weighs, each with the problem it is for: its own, then, in a
    decision's home block, that decision's options of the patient's other problems."""
    if facts.deceased:
        return []  # no plan for the deceased
    own = [(o, problem) for o in kb.options if o.problem in problem.group_ids]
    foreign: list[tuple[PlanOption, Problem]] = []
    for option in kb.options:
        if option.problem in problem.group_ids:
            continue
        home = _home(facts, kb, option.decision)
        if home is None or home.reference != problem.reference:
            continue
        others = facts.problems_in(option.problem)
        if others:
            foreign.append((option, others[0]))
    return own + foreign


def _fires(
    facts: ChartFacts,
    kb: Knowledge,
    option: PlanOption,
    meds: Sequence[Medication],
    problem: Problem,
    stated: frozenset[str] = frozenset(),
) -> tuple[str, list[FHIRResource]] | None:
    option_spec = kb.problems.get(option.problem)
    own = _treating(facts, option_spec.classes) if option_spec else meds
    return _option_fires(facts, kb, option, own, problem, stated)


def _normal(verdict: str | None, goal: Goal | None) -> bool:
    """The verdict says the result is at goal or in range ("normal" by the lab's range,
    "not reduced", "in the therapeutic range")."""
    if verdict is None:
        return False
    at_goal = goal.words.get("at goal", "at goal") if goal else "at goal"
    return verdict in (at_goal, "normal") or verdict.startswith("within ")


def _flagged_normal(reading: Result | BloodPressure) -> bool:
    """The lab flagged the result normal (interpretation N) and sent no range."""
    if not isinstance(reading, Result):
        return False
    return any(
        coding.get("code") == "N"
        for concept in reading.resource.get("interpretation") or []
        if isinstance(concept, Mapping)
        for coding in concept.get("coding") or []
        if isinstance(coding, Mapping)
    )


def _stated(statements: Sequence[Statement]) -> frozenset[str]:
    """What the block's statements so far state as facts (not their cross-references)."""
    return frozenset(c.reference for s in statements if s.see is None for c in s.citations)


def problem_block(facts: ChartFacts, kb: Knowledge, problem: Problem, shown: _Shown) -> Block:
    """The assessment and plan for one problem. What an earlier block already stated is
    not repeated: a result is left out, a medication is named with a cross-reference."""
    snapshot = facts.snapshot
    specs = [kb.problems[g.id] for g in problem.groups if g.id in kb.problems]
    result_ids: list[str] = []
    classes: set[str] = set()
    for spec in specs:
        classes |= spec.classes
        result_ids += [r for r in spec.results if r not in result_ids]
    statements: list[Statement] = []
    pointed: set[str] = set()
    #: The leading result's line is in this block: its verdict is not repeated in the head.
    lead_stated = False
    status: str | None = None
    #: KDIGO-style categories of the problem's leading results ("G3a", "A2"): together
    #: they are the status a clinician writes ("CKD G3a A2").
    categories: list[str] = []
    elsewhere: dict[str, tuple[Problem, list[Result | BloodPressure]]] = {}
    last_day: str | None = None
    for index, result_id in enumerate(result_ids):
        series = _series(facts, kb, result_id)
        if series is None:
            continue
        statement, verdict = _result_statement(facts, kb, series)
        if verdict and index == 0:
            status = verdict
        # Every KDIGO category, normal ones included ("G3a A1"): the status line names
        # where the patient is on both axes, not only what is abnormal. Not from a reading
        # that may not be the latest (verdict is None then).
        goal = goal_for(facts, kb, result_id)
        category = (
            category_of(goal, series.latest) if goal and goal.category_in_head and verdict else None
        )
        if category and (index == 0 or categories):
            categories.append(category)
        key = "|".join(_ref(r) for r in _resources(series.latest))
        if key in shown.results:
            if index > 0 and (_normal(verdict, goal) or _flagged_normal(series.latest)):
                continue  # a normal result of another block: not worth a pointer here
            owner = shown.results[key]
            elsewhere.setdefault(owner.reference, (owner, []))[1].append(series.latest)
            continue
        shown.results[key] = problem
        trend = _window_start(series, facts.as_of, heart_failure=facts.has_group("heart_failure"))
        if statements and trend is None and _day(series.latest) == last_day and last_day:
            # Drawn the same day as the result on the line above, and no trend whose own
            # date could be read as this value's: "same day" for the date said above (a
            # value with no date at all reads as undated).
            statement = replace(
                statement, text=statement.text.replace(_on(last_day), ", same day", 1)
            )
        last_day = _day(series.latest)
        statements.append(statement)
        if index == 0 and not categories:
            lead_stated = True
    #: Cross-references to other blocks, one line per block pointed to ("eGFR, UACR and
    #: statin: see Type 2 diabetes mellitus"), after the block's own plan.
    pointers: dict[str, tuple[Problem, list[str], list[FHIRResource]]] = {}
    for owner, readings in elsewhere.values():
        names = [_name(r) for r in readings]
        resources = [owner.condition, *(x for r in readings for x in _resources(r))]
        pointers[owner.reference] = (owner, names, resources)
    meds = _treating(facts, frozenset(classes)) if classes else facts.medications_for(problem)
    if facts.deceased:
        meds = []  # nothing is current therapy for a patient who has died
    if meds:
        phrases: list[str] = []
        cited: list[FHIRResource] = [m.request for m in meds]
        for med in meds:
            earlier = shown.medications.get(med.reference)
            if earlier is None:
                phrase = _med_phrase(med, facts.as_of)
                name = _note_name(med)
                if not any(p == name or p.startswith(f"{name} (") for p in phrases):
                    phrases.append(phrase)  # ten identical orders are one drug to treat
                shown.medications[med.reference] = problem
            else:
                phrase = f"{_short(med)} (see {earlier.name})"
                if phrase not in phrases:  # two orders of one drug are one pointer
                    phrases.append(phrase)
                cited.append(earlier.condition)
        statements.append(
            Statement(text="On " + "; ".join(phrases), citations=_cite(snapshot, cited))
        )
    for text, mr in _stopped_orders(facts, frozenset(classes)):
        if _ref(mr) in shown.stopped:
            continue
        shown.stopped.add(_ref(mr))
        statements.append(Statement(text=capitalize(text), citations=_cite(snapshot, [mr])))
    if (
        not meds
        and not facts.deceased
        and any(g.expects_treatment for g in problem.groups)
        and facts.complete("MedicationRequest")
    ):
        statements.append(
            Statement(
                text=f"No current medication on the list for {problem.name}",
                citations=_cite(snapshot, [problem.condition]),
            )
        )
    scored: set[str] = set()
    for score in risk_scores.for_problem(facts, problem.group_ids):
        scored.add(f"score:{score.score.id}")
        statements.append(
            Statement(
                text=score.text(),
                citations=_cite(snapshot, [problem.condition, *score.resources]),
                rule=f"{score.score.cite.label}: documentation aid, not order-time decision "
                "support; each component cites the resource it counts",
            )
        )
    checks: list[tuple[int, _Check]] = []  # "Check … before …" lines, by position
    for option, for_problem in _options_for(facts, kb, problem):
        home = _home(facts, kb, option.decision)
        if home is not None and home.reference != problem.reference:
            # Offered in its home block: point there, once, when this block would offer it.
            if option.decision in pointed or _fires(facts, kb, option, meds, problem) is None:
                continue
            pointed.add(option.decision)
            label = kb.decisions[option.decision].label
            entry = pointers.setdefault(home.reference, (home, [], [home.condition]))
            entry[1].append(label)
            continue
        if option.decision in shown.options:
            continue
        fired = _fires(facts, kb, option, meds, for_problem, _stated(statements) | scored)
        if fired is None:
            held = _held(facts, kb, option, meds, for_problem, _stated(statements))
            if held is not None:
                shown.options.add(option.decision)
                if isinstance(held, _Check):
                    checks.append((len(statements), held))
                    held = held.statement(snapshot)
                statements.append(held)
            continue
        shown.options.add(option.decision)
        why, cited = fired
        if for_problem.reference != problem.reference:
            # Another problem's option, offered in this (its decision's home) block.
            why = f"with {for_problem.name}; {why}" if why else f"with {for_problem.name}"
            cited = [for_problem.condition, *cited]
        lead = capitalize(option.text)
        text = f"{lead}: {why}" if why else lead
        statements.append(
            Statement(
                text=text,
                citations=_cite(snapshot, [problem.condition, *cited]),
                rule=f"{option.cite.label}: {option.rule}" if option.rule else option.cite.label,
                brief=lead if why else None,
                proposes=option.proposes,
            )
        )
    statements = _merge_checks(snapshot, statements, checks)
    for owner, names, resources in pointers.values():
        statements.append(
            Statement(
                text=f"{_join_names(names)}: see {_pointer_name(facts, owner)}",
                citations=_cite(snapshot, resources),
                see=owner.name,
            )
        )
    if categories:
        status = " ".join(categories)
    elif lead_stated:
        status = None
    onset = _onset(problem, facts.as_of)
    head = problem.name + (f", since {onset}" if onset else "")
    if status:
        head += f": {status}"
    statements.insert(0, Statement(text=head, citations=_cite(snapshot, [problem.condition])))
    return Block(problem=problem, statements=tuple(_unique(statements)))


def _day(reading: Result | BloodPressure) -> str | None:
    return reading.date


def _onset(problem: Problem, as_of: date) -> str | None:
    """The onset, for a problem new within the trend window ("since 2026-06-01"): that it
    is recent bears on the plan; the year a long-standing one began does not (it stays on
    the problem list and the problem summary)."""
    onset = date_part(problem.onset)
    when = to_date(onset)
    if when is None or when < _months_before(as_of, TREND_MONTHS):
        return None
    return onset


def _pointer_name(facts: ChartFacts, owner: Problem) -> str:
    """The problem pointed to, by the words before its qualifiers ("Type 2 diabetes
    mellitus" for "... with diabetic chronic kidney disease") when no other active problem
    begins with them; else its full name."""
    short = owner.name
    for cut in (" with ", " without ", ", ", " ("):
        short = short.split(cut)[0]
    others = [p for p in facts.problems if p.reference != owner.reference]
    if short == owner.name or any(p.name.lower().startswith(short.lower()) for p in others):
        return owner.name
    return short


def _join_names(names: Sequence[str]) -> str:
    return capitalize(", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0])


def _ref(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def blocks(facts: ChartFacts, extra_dirs: Iterable[Path] = (), *, due: bool = True) -> list[Block]:
    """One block per active problem, treated problems with results first.

    `due=False` leaves out the options that say a result is due (`due_months`): overdue
    monitoring is the care gaps' content, not shown where that kind is off.
    """
    kb = knowledge(extra_dirs)
    if not due:
        kb = replace(kb, options=tuple(o for o in kb.options if o.due_months is None))
    shown = _Shown()
    ordered = sorted(
        facts.problems, key=lambda p: 0 if any(g in kb.problems for g in p.group_ids) else 1
    )
    return [problem_block(facts, kb, problem, shown) for problem in ordered]


def _unique(statements: Sequence[Statement]) -> list[Statement]:
    seen: set[str] = set()
    out: list[Statement] = []
    for statement in statements:
        if statement.text not in seen:
            seen.add(statement.text)
            out.append(statement)
    return out
