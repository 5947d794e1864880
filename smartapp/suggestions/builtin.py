"""The built-in engine: offline, deterministic rules that draft cited suggestions from the chart.

It is the default engine and labels itself rule-based in every title. Each statement is
built from the values of the resources it cites (numbers, units and dates as the EHR
sent them) so the grounding verifier can check it; thresholds and intervals that come
from the site configuration are named in `Statement.rule`, never stated as chart facts.
Where the chart lacks what a kind needs, the kind returns nothing rather than a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from smartapp.fhir.snapshot import ChartSnapshot, FHIRResource
from smartapp.siteconfig import CareGapRules
from smartapp.suggestions import kinds as K
from smartapp.suggestions.facts import (
    BloodPressure,
    ChartFacts,
    Medication,
    Problem,
    Result,
    capitalize,
    concept_text,
    date_part,
    describe,
    interpretation_flag,
    no_known_allergy,
    reactions,
    reference_range_check,
    status_code,
    to_date,
)
from smartapp.suggestions.grounding import canonical_unit
from smartapp.suggestions.interfaces import Citation, EngineInfo, Statement, Suggestion
from smartapp.suggestions.terminology import (
    BP_DIASTOLIC,
    BP_PANEL,
    BP_SYSTOLIC,
    HBA1C,
    KEY_RESULTS,
    KIDNEY_FUNCTION,
    LOINC,
    ProblemGroup,
)

#: Bump when a rule or a table changes what the engine says (recorded with every suggestion).
RULES_REVISION = 1


def _version() -> str:
    try:
        base = package_version("smartapp")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        base = "0"
    return f"{base}+rules.{RULES_REVISION}"


BUILTIN_INFO = EngineInfo(name="builtin-rules", version=_version(), rule_based=True)

_BP_PARTS = {f"{LOINC}|{code}" for code in (*BP_SYSTOLIC, *BP_DIASTOLIC)}
_COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}


def _cite(snapshot: ChartSnapshot, *resources: FHIRResource) -> tuple[Citation, ...]:
    seen: dict[str, Citation] = {}
    for resource in resources:
        reference = f"{resource.get('resourceType')}/{resource.get('id')}"
        seen.setdefault(
            reference, Citation(reference=reference, display=describe(resource, snapshot))
        )
    return tuple(seen.values())


def _cite_refs(snapshot: ChartSnapshot, references: Sequence[str]) -> tuple[Citation, ...]:
    resources = [r for r in (snapshot.get(ref) for ref in references) if r is not None]
    return _cite(snapshot, *resources)


def _on(when: str | None) -> str:
    return f" on {when}" if when else ""


def _months_before(day: date, months: int) -> date:
    month_index = day.year * 12 + (day.month - 1) - months
    year, month = divmod(month_index, 12)
    for candidate in (day.day, 30, 29, 28):
        try:
            return date(year, month + 1, candidate)
        except ValueError:
            continue
    raise AssertionError("unreachable")  # pragma: no cover


def _direction(latest: Any, previous: Any) -> str | None:
    if latest is None or previous is None:
        return None
    if latest > previous:
        return "up"
    if latest < previous:
        return "down"
    return "unchanged"


def _same_unit(a: str | None, b: str | None) -> bool:
    return canonical_unit(a) == canonical_unit(b)


def _join(items: Sequence[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


@dataclass(frozen=True, kw_only=True)
class _Gap:
    """A care gap found by a rule: for the care-gaps kind, the plan, and the instructions."""

    rule_id: str
    groups: frozenset[str]
    statement: Statement
    patient_text: str


class BuiltinEngine:
    """Rule-based suggestions for every kind in `smartapp.suggestions.kinds.KINDS`."""

    info = BUILTIN_INFO

    def __init__(self) -> None:
        self._kinds: dict[str, Callable[[ChartFacts, Mapping[str, Any]], list[Suggestion]]] = {
            K.PROBLEM_SUMMARY: self.problem_summary,
            K.MEDICATIONS: self.medications,
            K.VITALS_LABS: self.vitals_labs,
            K.ASSESSMENT_PLAN: self.assessment_plan,
            K.CARE_GAPS: self.care_gaps,
            K.PATIENT_INSTRUCTIONS: self.patient_instructions,
            K.ALLERGIES: self.allergies,
        }

    def kinds(self) -> tuple[str, ...]:
        return tuple(self._kinds)

    def suggest(
        self, snapshot: ChartSnapshot, kind: str, config: Mapping[str, Any]
    ) -> list[Suggestion]:
        handler = self._kinds.get(kind)
        if handler is None:
            return []
        return handler(ChartFacts(snapshot), config)

    # -- shared pieces -------------------------------------------------------------------

    def _suggestion(
        self, kind: str, title: str, statements: Sequence[Statement]
    ) -> list[Suggestion]:
        if not statements:
            return []
        return [Suggestion(kind=kind, title=title, statements=tuple(statements), engine=self.info)]

    @staticmethod
    def _latest_for_group(
        facts: ChartFacts, group: ProblemGroup
    ) -> list[tuple[str, list[FHIRResource]]]:
        """'latest HbA1c 7.2% on 2025-11-02' phrases (and what they cite) for a problem."""
        phrases: list[tuple[str, list[FHIRResource]]] = []
        for codes in group.results:
            if codes == BP_PANEL:
                if facts.blood_pressures:
                    bp = facts.blood_pressures[0]
                    phrases.append(
                        (f"latest blood pressure {bp.text()}{_on(bp.date)}", list(bp.resources))
                    )
                continue
            result = facts.latest(codes)
            if result is not None:
                phrases.append(
                    (
                        f"latest {result.name} {result.value_text()}{_on(result.date)}",
                        [result.resource],
                    )
                )
        return phrases

    @staticmethod
    def _problem_phrase(problem: Problem) -> str:
        onset = date_part(problem.onset)
        return f"{problem.name}, onset {onset}" if onset else problem.name

    # -- problem summary ---------------------------------------------------------------

    def problem_summary(self, facts: ChartFacts, config: Mapping[str, Any]) -> list[Suggestion]:
        statements: list[Statement] = []
        for problem in facts.problems:
            parts = [self._problem_phrase(problem)]
            cited: list[FHIRResource] = [problem.condition]
            seen: set[str] = set()
            for group in problem.groups:
                for phrase, resources in self._latest_for_group(facts, group):
                    if phrase not in seen:
                        seen.add(phrase)
                        parts.append(phrase)
                        cited.extend(resources)
            statements.append(
                Statement(text="; ".join(parts), citations=_cite(facts.snapshot, *cited))
            )
        return self._suggestion(
            K.PROBLEM_SUMMARY, f"{K.KIND_LABELS[K.PROBLEM_SUMMARY]} (rule-based)", statements
        )

    # -- medications -------------------------------------------------------------------

    def medications(self, facts: ChartFacts, config: Mapping[str, Any]) -> list[Suggestion]:
        if "MedicationRequest" in facts.snapshot.not_granted:
            return []  # without the orders, "no treatment" would be a guess
        snapshot = facts.snapshot
        statements: list[Statement] = []
        for med in facts.medications:
            text = med.name
            if med.dosage:
                text += f": {med.dosage}"
            if med.authored:
                text += f" (ordered {med.authored})"
            statements.append(Statement(text=text, citations=_cite_refs(snapshot, med.references)))
        statements += self._duplicate_hints(facts)
        statements += self._unmatched_medication_hints(facts)
        statements += self._untreated_problem_hints(facts)
        return self._suggestion(
            K.MEDICATIONS, f"{K.KIND_LABELS[K.MEDICATIONS]} (rule-based)", statements
        )

    @staticmethod
    def _duplicate_hints(facts: ChartFacts) -> list[Statement]:
        hints: list[Statement] = []
        by_ingredient: dict[str, list[Medication]] = {}
        by_group: dict[str, list[Medication]] = {}
        for med in facts.medications:
            for ingredient in med.ingredients:
                by_ingredient.setdefault(ingredient, []).append(med)
            for group in dict.fromkeys(c.duplicate_group for c in med.classes):
                by_group.setdefault(group, []).append(med)
        rule = "Reconciliation hint: drug classes from the built-in table"
        for ingredient, meds in by_ingredient.items():
            if len(meds) > 1:
                refs = [r for m in meds for r in m.references]
                hints.append(
                    Statement(
                        text=f"Possible duplicate: {ingredient} is in more than one active "
                        f"order ({'; '.join(m.name for m in meds)})",
                        citations=_cite_refs(facts.snapshot, refs),
                        rule=rule,
                    )
                )
        for group, meds in by_group.items():
            distinct = {frozenset(m.ingredients) for m in meds}
            if len(distinct) > 1:
                refs = [r for m in meds for r in m.references]
                hints.append(
                    Statement(
                        text=f"Possible duplicate therapy: {_join([m.name for m in meds])} "
                        f"are {'both' if len(meds) == 2 else 'all'} {group}",
                        citations=_cite_refs(facts.snapshot, refs),
                        rule=rule,
                    )
                )
        return hints

    @staticmethod
    def _unmatched_medication_hints(facts: ChartFacts) -> list[Statement]:
        groups = frozenset(g for p in facts.problems for g in p.group_ids)
        hints: list[Statement] = []
        for med in facts.medications:
            if med.classes and not any((c.treats | c.also_for) & groups for c in med.classes):
                label = _join([c.label for c in med.classes])
                hints.append(
                    Statement(
                        text=f"No active problem on the list matches {med.name} ({label})",
                        citations=_cite_refs(facts.snapshot, med.references),
                        rule="Reconciliation hint: each drug class's usual indications",
                    )
                )
        return hints

    @staticmethod
    def _untreated_problem_hints(facts: ChartFacts) -> list[Statement]:
        hints: list[Statement] = []
        for problem in facts.problems:
            if any(g.expects_treatment for g in problem.groups) and not facts.medications_for(
                problem
            ):
                hints.append(
                    Statement(
                        text=f"No current medication on the list treats {problem.name}",
                        citations=_cite(facts.snapshot, problem.condition),
                        rule="Reconciliation hint: problems usually treated with medication",
                    )
                )
        return hints

    # -- vitals and labs -----------------------------------------------------------------

    def vitals_labs(self, facts: ChartFacts, config: Mapping[str, Any]) -> list[Suggestion]:
        detailed = config.get("detail") == "detailed"
        snapshot = facts.snapshot
        rows: list[tuple[int, str, Statement]] = []
        order = {f"{LOINC}|{code}": i for i, code in enumerate(KEY_RESULTS)}

        readings = facts.blood_pressures
        if readings:
            rows.append((order[f"{LOINC}|{BP_PANEL[0]}"], "", self._bp_trend(snapshot, readings)))
        for key, results in facts.results.items():
            if key in _BP_PARTS:
                continue  # the blood pressure line above already reports them
            latest = results[0]
            flag = self._flag(latest)
            if not detailed and key not in order and flag is None:
                continue
            rows.append(
                (
                    order.get(key, len(order)),
                    latest.name.lower(),
                    self._trend(snapshot, results, flag),
                )
            )
        rows.sort(key=lambda row: (row[0], row[1]))
        return self._suggestion(
            K.VITALS_LABS,
            f"{K.KIND_LABELS[K.VITALS_LABS]} (rule-based)",
            [statement for _, _, statement in rows],
        )

    @staticmethod
    def _flag(result: Result) -> str | None:
        word = interpretation_flag(result.resource)
        if word:
            return f"flagged {word} by the lab"
        check = reference_range_check(result.resource, result.value)
        if check:
            return f"{check.direction} the reference range {check.range_text}"
        return None

    def _trend(self, snapshot: ChartSnapshot, results: list[Result], flag: str | None) -> Statement:
        latest = results[0]
        text = f"{capitalize(latest.name)} {latest.value_text()}{_on(latest.date)}"
        cited = [latest.resource]
        previous = results[1] if len(results) > 1 else None
        if previous is not None:
            direction = (
                _direction(latest.value.number, previous.value.number)
                if _same_unit(latest.value.unit, previous.value.unit)
                else None
            )
            text += f", previous {previous.value_text()}{_on(previous.date)}"
            if direction:
                text += f" ({direction})"
            cited.append(previous.resource)
        if flag:
            text += f"; {flag}"
        return Statement(text=text, citations=_cite(snapshot, *cited))

    @staticmethod
    def _bp_trend(snapshot: ChartSnapshot, readings: list[BloodPressure]) -> Statement:
        latest = readings[0]
        text = f"Blood pressure {latest.text()}{_on(latest.date)}"
        cited = list(latest.resources)
        if len(readings) > 1:
            previous = readings[1]
            systolic = _direction(latest.systolic.number, previous.systolic.number)
            diastolic = _direction(latest.diastolic.number, previous.diastolic.number)
            words = {"up": "higher", "down": "lower", "unchanged": "unchanged"}
            direction = words[systolic] if systolic == diastolic and systolic else "mixed change"
            text += f", previous {previous.text()}{_on(previous.date)} ({direction})"
            cited.extend(previous.resources)
        for resource in latest.resources:
            word = interpretation_flag(resource)
            if word:
                text += f"; flagged {word}"
                break
        return Statement(text=text, citations=_cite(snapshot, *cited))

    # -- care gaps -----------------------------------------------------------------------

    def care_gaps(self, facts: ChartFacts, config: Mapping[str, Any]) -> list[Suggestion]:
        gaps = self.find_gaps(facts, _rules(config))
        return self._suggestion(
            K.CARE_GAPS,
            f"{K.KIND_LABELS[K.CARE_GAPS]} (rule-based, site rules)",
            [gap.statement for gap in gaps],
        )

    def find_gaps(self, facts: ChartFacts, rules: CareGapRules) -> list[_Gap]:
        gaps: list[_Gap] = []
        snapshot = facts.snapshot
        today = facts.as_of
        diabetes = facts.problems_in("diabetes")
        kidney = diabetes + [p for p in facts.problems_in("ckd") if p not in diabetes]

        if "hba1c_interval" in rules.rules and diabetes:
            rule = f"Diabetes: HbA1c at least every {rules.hba1c_interval_months} months"
            cutoff = _months_before(today, rules.hba1c_interval_months)
            gap = self._interval_gap(
                facts, diabetes[0], HBA1C, cutoff, rule, rule_id="hba1c_interval",
                what="HbA1c", due="HbA1c is due",
                patient="You are due for an A1c blood test. It shows your average blood sugar.",
            )  # fmt: skip
            if gap:
                gaps.append(gap)

        if "kidney_test_interval" in rules.rules and kidney:
            rule = (
                "Diabetes or chronic kidney disease: eGFR or creatinine at least every "
                f"{rules.kidney_test_interval_months} months"
            )
            cutoff = _months_before(today, rules.kidney_test_interval_months)
            gap = self._interval_gap(
                facts, kidney[0], KIDNEY_FUNCTION, cutoff, rule, rule_id="kidney_test_interval",
                what="eGFR or creatinine", due="A kidney function test is due",
                patient="You are due for a blood test that checks how well your kidneys work.",
            )  # fmt: skip
            if gap:
                gaps.append(gap)

        readings = facts.blood_pressures[: rules.bp_readings]
        if (
            "bp_above_threshold" in rules.rules
            and len(readings) == rules.bp_readings
            and all(r.at_or_above(rules.bp_systolic, rules.bp_diastolic) for r in readings)
        ):
            ordered = list(reversed(readings))
            shown = _join([f"{r.text()}{_on(r.date)}" for r in ordered])
            count = _COUNT_WORDS.get(len(ordered))
            scope = f"the last {count} readings are" if count else "the most recent reading is"
            cited = [res for r in ordered for res in r.resources]
            gaps.append(
                _Gap(
                    rule_id="bp_above_threshold",
                    groups=frozenset({"hypertension"}),
                    statement=Statement(
                        text=f"Blood pressure {shown}: {scope} at or above the site's threshold",
                        citations=_cite(snapshot, *cited),
                        rule=(
                            f"Blood pressure at or above {rules.bp_systolic}/"
                            f"{rules.bp_diastolic} mmHg at the last {rules.bp_readings} readings"
                        ),
                    ),
                    patient_text=(
                        f"Your blood pressure was {shown}. That is above your goal. "
                        "Talk with your care team about it."
                    ),
                )
            )
        return gaps

    @staticmethod
    def _interval_gap(
        facts: ChartFacts,
        problem: Problem,
        codes: Sequence[str],
        cutoff: date,
        rule: str,
        *,
        rule_id: str,
        what: str,
        due: str,
        patient: str,
    ) -> _Gap | None:
        latest = facts.latest(codes)
        groups = problem.group_ids
        if latest is None:
            return _Gap(
                rule_id=rule_id,
                groups=groups,
                statement=Statement(
                    text=f"{problem.name} is on the problem list and no {what} result is on file",
                    citations=_cite(facts.snapshot, problem.condition),
                    rule=rule,
                ),
                patient_text=patient,
            )
        taken = to_date(latest.when)
        if taken is not None and taken >= cutoff:
            return None
        return _Gap(
            rule_id=rule_id,
            groups=groups,
            statement=Statement(
                text=f"{due}: the latest {latest.name} is {latest.value_text()}{_on(latest.date)}",
                citations=_cite(facts.snapshot, latest.resource, problem.condition),
                rule=rule,
            ),
            patient_text=patient,
        )

    # -- assessment and plan ------------------------------------------------------------

    def assessment_plan(self, facts: ChartFacts, config: Mapping[str, Any]) -> list[Suggestion]:
        snapshot = facts.snapshot
        gaps = self.find_gaps(facts, _rules(config))
        detailed = config.get("detail") == "detailed"
        out: list[Suggestion] = []
        for problem in facts.problems:
            statements = [
                Statement(
                    text=f"{self._problem_phrase(problem)}: active on the problem list",
                    citations=_cite(snapshot, problem.condition),
                )
            ]
            for group in problem.groups:
                statements += self._results_statements(facts, group, detailed=detailed)
            meds = facts.medications_for(problem)
            if meds:
                refs = [r for m in meds for r in m.references]
                statements.append(
                    Statement(
                        text="Current medication for this problem: "
                        + "; ".join(m.name for m in meds),
                        citations=_cite_refs(snapshot, refs),
                    )
                )
            elif any(g.expects_treatment for g in problem.groups):
                statements.append(
                    Statement(
                        text=f"No current medication on the list treats {problem.name}",
                        citations=_cite(snapshot, problem.condition),
                        rule="Reconciliation hint: problems usually treated with medication",
                    )
                )
            for gap in gaps:
                if gap.groups & problem.group_ids:
                    statements.append(
                        Statement(
                            text=f"Plan (care-gap rule): {gap.statement.text}",
                            citations=gap.statement.citations,
                            rule=gap.statement.rule,
                        )
                    )
            out += self._suggestion(
                K.ASSESSMENT_PLAN,
                f"{K.KIND_LABELS[K.ASSESSMENT_PLAN]}: {problem.name} (rule-based, for review)",
                _unique(statements),
            )
        return out

    @staticmethod
    def _results_statements(
        facts: ChartFacts, group: ProblemGroup, *, detailed: bool
    ) -> list[Statement]:
        snapshot = facts.snapshot
        statements: list[Statement] = []
        for codes in group.results:
            if codes == BP_PANEL:
                readings = facts.blood_pressures
                if readings:
                    statements.append(
                        BuiltinEngine._bp_trend(snapshot, readings[: 2 if detailed else 1])
                    )
                continue
            results = facts.results_for(codes)
            if results:
                latest = results[0]
                previous = results[1] if len(results) > 1 else None
                text = f"Latest {latest.name} {latest.value_text()}{_on(latest.date)}"
                cited = [latest.resource]
                if previous is not None and detailed:
                    text += f", previous {previous.value_text()}{_on(previous.date)}"
                    if _same_unit(latest.value.unit, previous.value.unit):
                        direction = _direction(latest.value.number, previous.value.number)
                        text += f" ({direction})" if direction else ""
                    cited.append(previous.resource)
                statements.append(Statement(text=text, citations=_cite(snapshot, *cited)))
        return statements

    # -- patient instructions ------------------------------------------------------------

    _PATIENT_RESULT = {
        "diabetes": "Your last A1c blood test was {value}{on}.",
        "hypertension": "Your last blood pressure was {value}{on}.",
        "ckd": "Your last kidney blood test ({name}) was {value}{on}.",
        "anemia": "Your last hemoglobin blood test was {value}{on}.",
    }

    def patient_instructions(
        self, facts: ChartFacts, config: Mapping[str, Any]
    ) -> list[Suggestion]:
        snapshot = facts.snapshot
        statements: list[Statement] = []
        told: set[str] = set()
        for problem in facts.problems:
            group = next((g for g in problem.groups if g.id not in told), None)
            if group is None:
                continue
            told.add(group.id)
            text = f"You have {group.lay}."
            if group.id == "obesity":
                text = "We talked about your weight."
            cited: list[FHIRResource] = [problem.condition]
            template = self._PATIENT_RESULT.get(group.id)
            if template:
                if group.id == "hypertension" and facts.blood_pressures:
                    bp = facts.blood_pressures[0]
                    text += " " + template.format(value=bp.text(), on=_on(bp.date), name="")
                    cited += list(bp.resources)
                else:
                    for codes in group.results:
                        result = facts.latest(codes) if codes != BP_PANEL else None
                        if result is not None:
                            text += " " + template.format(
                                value=result.value_text(), on=_on(result.date), name=result.name
                            )
                            cited.append(result.resource)
                            break
            statements.append(Statement(text=text, citations=_cite(snapshot, *cited)))
        for med in facts.medications:
            name = med.ingredients[0] if len(med.ingredients) == 1 else med.name
            statements.append(
                Statement(
                    text=f"Your medicine list includes {name}. Take it the way your care team "
                    "told you.",
                    citations=_cite_refs(snapshot, med.references),
                )
            )
        for gap in self.find_gaps(facts, _rules(config)):
            statements.append(
                Statement(
                    text=gap.patient_text,
                    citations=gap.statement.citations,
                    rule=gap.statement.rule,
                )
            )
        for allergy in facts.allergies:
            if no_known_allergy(allergy):
                continue
            substance = concept_text(allergy.get("code"))
            if substance:
                statements.append(
                    Statement(
                        text=f"You are allergic to {substance}. Tell every doctor and pharmacist.",
                        citations=_cite(snapshot, allergy),
                    )
                )
        return self._suggestion(
            K.PATIENT_INSTRUCTIONS,
            f"{K.KIND_LABELS[K.PATIENT_INSTRUCTIONS]} (plain language, rule-based draft)",
            statements,
        )

    # -- allergies ---------------------------------------------------------------------

    def allergies(self, facts: ChartFacts, config: Mapping[str, Any]) -> list[Suggestion]:
        snapshot = facts.snapshot
        statements: list[Statement] = []
        for allergy in facts.allergies:
            substance = concept_text(allergy.get("code"))
            if not substance:
                continue
            recorded = date_part(allergy.get("recordedDate") or allergy.get("onsetDateTime"))
            if no_known_allergy(allergy):
                text = capitalize(substance) + (f" (recorded {recorded})" if recorded else "")
                statements.append(Statement(text=text, citations=_cite(snapshot, allergy)))
                continue
            kind = (
                allergy.get("type") if allergy.get("type") in ("allergy", "intolerance") else None
            )
            text = f"{capitalize(substance)}: {kind or 'allergy or intolerance'}"
            if allergy.get("criticality") in ("low", "high", "unable-to-assess"):
                text += f", criticality {allergy['criticality']}"
            if status_code(allergy.get("verificationStatus")) == "unconfirmed":
                text += ", unconfirmed"
            for manifestation, severity in reactions(allergy):
                text += f"; reaction: {manifestation}" + (f" ({severity})" if severity else "")
            if recorded:
                text += f"; recorded {recorded}"
            statements.append(Statement(text=text, citations=_cite(snapshot, allergy)))
        return self._suggestion(
            K.ALLERGIES, f"{K.KIND_LABELS[K.ALLERGIES]} (from the chart, rule-based)", statements
        )


def _rules(config: Mapping[str, Any]) -> CareGapRules:
    rules = config.get("care_gaps")
    return rules if isinstance(rules, CareGapRules) else CareGapRules()


def _unique(statements: Sequence[Statement]) -> list[Statement]:
    seen: set[str] = set()
    out: list[Statement] = []
    for statement in statements:
        if statement.text not in seen:
            seen.add(statement.text)
            out.append(statement)
    return out
