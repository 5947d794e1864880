"""The built-in engine: offline, deterministic rules that draft cited suggestions from the chart.

It is the default engine and labels itself rule-based in every title. Each statement is
built from the values of the resources it cites (numbers, units and dates as the EHR
sent them) so the grounding verifier can check it; thresholds and intervals that come
from the site configuration are named in `Statement.rule`, never stated as chart facts.
Where the chart lacks what a kind needs, the kind returns nothing rather than a guess.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from smartapp import kinds as K
from smartapp.fhir.snapshot import ChartSnapshot, FHIRResource
from smartapp.siteconfig import CareGapRules
from smartapp.suggestions import assessment, preventive, safety
from smartapp.suggestions.crossref import PROBLEM, PROBLEM_REFERENCE
from smartapp.suggestions.facts import (
    BloodPressure,
    ChartFacts,
    Medication,
    Problem,
    Result,
    age_note,
    capitalize,
    concept_text,
    date_part,
    deceased_text,
    describe,
    interpretation_flag,
    medication_concept,
    no_known_allergy,
    reactions,
    reference_range_check,
    status_code,
    to_date,
)
from smartapp.suggestions.grounding import canonical_unit, contradictions
from smartapp.suggestions.interfaces import Citation, EngineInfo, Statement, Suggestion
from smartapp.suggestions.ranges import default_range_check
from smartapp.suggestions.terminology import (
    BP_DIASTOLIC,
    BP_PANEL,
    BP_SYSTOLIC,
    CREATININE,
    EGFR,
    HBA1C,
    KEY_RESULTS,
    LDL,
    LOINC,
    MEDICATION_NAMES,
    TOTAL_CHOLESTEROL,
    UACR,
    ProblemGroup,
)

#: Bump when a rule or a table changes what the engine says (recorded with every suggestion).
RULES_REVISION = 18


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


def _interval(months: int) -> str:
    """A site's interval for the rule's label: "6 months", "12 months", "5 years"."""
    if months % 12 == 0 and months > 12:
        return f"{months // 12} years"
    return f"{months} month" if months == 1 else f"{months} months"


@dataclass(frozen=True, kw_only=True)
class _Evidence:
    """What a care-gap rule found: how to say it, when it was, and what to cite."""

    phrase: str
    when: str | None
    resources: tuple[FHIRResource, ...]
    #: How to say it after "the latest, …" when it is too old (default: `phrase`).
    due_phrase: str | None = None


@dataclass(frozen=True, kw_only=True)
class _CareItem:
    """One care-gap rule applied: met (up to date) or due. Due items also go into the plan
    (under the problems in `groups`) and the patient instructions."""

    rule_id: str
    due: bool
    groups: frozenset[str]
    statement: Statement
    plan_text: str = ""
    patient_text: str = ""


def _abnormal(facts: ChartFacts, result: Result) -> tuple[str | None, str | None]:
    """How the result is out of range (the lab's flag, its own range, else the cited
    default table's), and for the default table the range and its source (for `rule`)."""
    flag = interpretation_flag(result.resource)
    if flag:
        return f"flagged {flag}", None
    check = reference_range_check(result.resource, result.value)
    if check:
        return f"{check.direction} the reference range", None
    if result.resource.get("referenceRange") or result.resource.get("interpretation"):
        return None, None  # the lab's own range or flag: within it
    gender = facts.snapshot.patient.get("gender")
    found = default_range_check(
        result.resource, result.value, sex=gender if isinstance(gender, str) else None
    )
    if found is None:
        return None, None
    default_check, default = found
    return (
        f"{default_check.direction} the default reference range",
        f"default reference range {default_check.range_text} ({default.cite.label})",
    )


def _kidney_topic(problem: Problem) -> str:
    return "Diabetes" if "diabetes" in problem.group_ids else "Chronic kidney disease"


def _latest_lipid(facts: ChartFacts) -> Result | None:
    """The newest LDL or total cholesterol; LDL when both were drawn the same day."""
    ldl, total = facts.latest(LDL), facts.latest(TOTAL_CHOLESTEROL)
    if ldl is None or total is None:
        return ldl or total
    return total if (to_date(total.when) or date.min) > (to_date(ldl.when) or date.min) else ldl


def _latest_kidney_test(facts: ChartFacts) -> Result | None:
    """The newest eGFR or creatinine; the eGFR when both were drawn the same day (what
    kidney function is judged by)."""
    egfr, creatinine = facts.latest(EGFR), facts.latest(CREATININE)
    if egfr is None or creatinine is None:
        return egfr or creatinine
    newer = (to_date(creatinine.when) or date.min) > (to_date(egfr.when) or date.min)
    return creatinine if newer else egfr


class BuiltinEngine:
    """Rule-based suggestions for every kind in `smartapp.kinds.KINDS`."""

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
        return handler(ChartFacts.of(snapshot), config)

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
        latest = facts.latest_word("Observation")
        for codes in group.results:
            if codes == BP_PANEL:
                if facts.blood_pressures:
                    bp = facts.blood_pressures[0]
                    phrases.append(
                        (f"{latest} blood pressure {bp.text()}{_on(bp.date)}", list(bp.resources))
                    )
                continue
            result = facts.latest(codes)
            if result is not None:
                phrases.append(
                    (
                        f"{latest} {result.name} {result.value_text()}{_on(result.date)}"
                        f"{age_note(result, facts.as_of)}",
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
                Statement(
                    text="; ".join(parts),
                    citations=_cite(facts.snapshot, *cited),
                    brief=parts[0] if len(parts) > 1 else None,
                )
            )
        if facts.deceased:
            statements.insert(0, self._deceased_statement(facts))
        return self._suggestion(
            K.PROBLEM_SUMMARY, f"{K.KIND_LABELS[K.PROBLEM_SUMMARY]} (rule-based)", statements
        )

    @staticmethod
    def _deceased_statement(facts: ChartFacts) -> Statement:
        patient = facts.snapshot.patient
        return Statement(text=deceased_text(patient), citations=_cite(facts.snapshot, patient))

    # -- medications -------------------------------------------------------------------

    def medications(self, facts: ChartFacts, config: Mapping[str, Any]) -> list[Suggestion]:
        if "MedicationRequest" in facts.snapshot.not_granted:
            return []  # without the orders, "no treatment" would be a guess
        snapshot = facts.snapshot
        if facts.deceased:
            return self._suggestion(
                K.MEDICATIONS,
                f"{K.KIND_LABELS[K.MEDICATIONS]} (rule-based)",
                self._deceased_medications(facts),
            )
        statements: list[Statement] = []
        # The same drug, instructions and status ordered several times is one line citing
        # every order (the duplicate hint above says it is more than one).
        same: dict[tuple[str, str | None, bool, bool], list[Medication]] = {}
        for med in facts.medications:
            same.setdefault((med.name, med.dosage, med.reported, med.on_hold), []).append(med)
        for group in same.values():
            med = group[0]
            text = med.name
            if med.dosage and contradictions(med.dosage, snapshot):
                # Free text that contradicts the chart (an instruction planted in it, an
                # "allergy ruled out"): not repeated, even quoted; the order still shows.
                text += ": its instructions text is left out (it contradicts the chart)"
            elif med.dosage:
                source = (
                    "the statement's dosage says"
                    if med.reported
                    else "the order's instructions say"
                )
                text += f': {source} "{med.dosage}"'
            if med.reported:
                asserted = f", recorded {med.asserted}" if med.asserted else ""
                text += f" ({med.source_phrase}{asserted}; not an order)"
            elif len(group) > 1:
                dates = sorted(m.authored for m in group if m.authored)
                span = f", ordered {dates[0]} to {dates[-1]}" if dates else ""
                text += f" (the same order, more than once{span})"
            elif med.authored:
                text += f" (ordered {med.authored})"
            if med.on_hold:
                text += ", on hold"
            references = [r for m in group for r in m.references]
            statements.append(Statement(text=text, citations=_cite_refs(snapshot, references)))
        statements += self._proposed_orders(facts)
        statements += self._stopped_orders(facts)
        # Safety flags (allergy, contraindication, interaction) come first.
        statements = self._safety_hints(facts) + self._duplicate_hints(facts) + statements
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
                        f"order ({'; '.join(dict.fromkeys(m.name for m in meds))})",
                        citations=_cite_refs(facts.snapshot, refs),
                        rule=rule,
                        rule_id="duplicate-same-drug",
                    )
                )
        # A pair the safety tables name (ACE inhibitor + ARB: dual RAS blockade) is said
        # there, with its source; not again as a class duplicate.
        named = [
            set(flag.medications)
            for flag in safety.safety_flags(facts)
            if flag.rule.kind == "duplicate"
        ]
        for group, meds in by_group.items():
            distinct = {frozenset(m.ingredients) for m in meds}
            if any({r for m in meds for r in m.references} <= refs for refs in named):
                continue
            if len(distinct) > 1:
                refs = [r for m in meds for r in m.references]
                hints.append(
                    Statement(
                        text=f"Possible duplicate therapy: {_join([m.name for m in meds])} "
                        f"are {'both' if len(meds) == 2 else 'all'} {group}",
                        citations=_cite_refs(facts.snapshot, refs),
                        rule=rule,
                        rule_id="duplicate-class",
                    )
                )
        return hints

    @staticmethod
    def _safety_hints(facts: ChartFacts) -> list[Statement]:
        return [
            Statement(
                text=flag.text,
                citations=_cite_refs(facts.snapshot, flag.references),
                rule=flag.rule.label,
                rule_id=flag.rule.id,
            )
            for flag in safety.safety_flags(facts)
        ]

    def _deceased_medications(self, facts: ChartFacts) -> list[Statement]:
        """The death first; what the chart still lists, said not to be therapy; no checks,
        hints or proposals (a conflict or a gap is no longer something to act on)."""
        statements = [self._deceased_statement(facts)]
        for med in facts.medications:
            when = f" (ordered {med.authored})" if med.authored and not med.reported else ""
            statements.append(
                Statement(
                    text=f"Still listed in the chart, not current therapy: {med.name}{when}",
                    citations=_cite_refs(facts.snapshot, med.references),
                )
            )
        return statements

    @staticmethod
    def _proposed_orders(facts: ChartFacts) -> list[Statement]:
        """Drafts, proposals and plans, said to be what they are: not current therapy."""
        statements: list[Statement] = []
        for med in facts.proposed_medications:
            what = "draft order" if med.request.get("status") == "draft" else med.request["intent"]
            when = f", {med.authored}" if med.authored else ""
            statements.append(
                Statement(
                    text=f"Proposed, not yet ordered: {med.name} ({what}{when})",
                    citations=_cite_refs(facts.snapshot, med.references),
                )
            )
        return statements

    @staticmethod
    def _stopped_orders(facts: ChartFacts) -> list[Statement]:
        """Orders stopped since the last year, with the chart's reason, shown as stopped."""
        statements: list[Statement] = []
        for mr in facts.snapshot.of_type("MedicationRequest"):
            if mr.get("status") != "stopped" or not mr.get("id"):
                continue
            concept, references = medication_concept(mr, facts.snapshot)
            name = concept_text(concept)
            if not name:
                continue
            text = f"Stopped: {name}"
            reason = concept_text(mr.get("statusReason"))
            if reason:
                text += f" (reason recorded: {reason})"
            statements.append(
                Statement(text=text, citations=_cite_refs(facts.snapshot, references))
            )
        return statements

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
                    self._trend(facts, results, flag),
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
        if result.resource.get("referenceRange") or result.resource.get("interpretation"):
            return None
        # No range or flag on the result: the cited default table (ranges that do not
        # depend on sex), named without its numbers (they are not the chart's).
        found = default_range_check(result.resource, result.value, sex=None)
        if found:
            return f"{found[0].direction} the default reference range"
        return None

    def _trend(self, facts: ChartFacts, results: list[Result], flag: str | None) -> Statement:
        snapshot = facts.snapshot
        latest = results[0]
        text = f"{capitalize(latest.name)} {latest.value_text()}{_on(latest.date)}"
        text += age_note(latest, facts.as_of)
        cited = [latest.resource]
        previous = results[1] if len(results) > 1 else None
        if previous is not None:
            direction = _direction(*assessment.in_one_unit(latest, previous))
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
        rules = _rules(config)
        items = [(i.due, i.statement) for i in self.review_care(facts, rules)]
        items += preventive.review(facts, rules.packs)
        # What is due first: it is what the clinician may act on; then what is up to date.
        ordered = [s for due, s in items if due] + [s for due, s in items if not due]
        return self._suggestion(
            K.CARE_GAPS, f"{K.KIND_LABELS[K.CARE_GAPS]} (rule-based, site rules)", ordered
        )

    def due_care_gaps(self, snapshot: ChartSnapshot, config: Mapping[str, Any]) -> list[Statement]:
        """The care-gap statements that are due, site rules and preventive packs (what a
        CDS Hooks card counts before the sidebar opens)."""
        facts = ChartFacts.of(snapshot)
        rules = _rules(config)
        due = [item.statement for item in self.find_gaps(facts, rules)]
        return due + [s for is_due, s in preventive.review(facts, rules.packs) if is_due]

    def find_gaps(self, facts: ChartFacts, rules: CareGapRules) -> list[_CareItem]:
        """The rules' items that are due (for the plan and the patient instructions)."""
        return [item for item in self.review_care(facts, rules) if item.due]

    def review_care(self, facts: ChartFacts, rules: CareGapRules) -> list[_CareItem]:
        """Every applicable rule, met or due, each with the resources that show it.

        A rule says something is missing ("none is on file", "the latest is older than
        the site's interval") only when the chart's search for that type was complete;
        what is up to date is shown whatever the search. Due items come with the plan's
        wording and the patient's; thresholds stay in `Statement.rule`.
        """
        if facts.deceased:
            return []
        items: list[_CareItem | None] = []
        today = facts.as_of
        enabled = set(rules.rules)
        diabetes = facts.problems_in("diabetes")
        kidney = diabetes + [p for p in facts.problems_in("ckd") if p not in diabetes]

        if "hba1c_interval" in enabled and diabetes:
            items.append(
                self._interval_item(
                    facts,
                    rule_id="hba1c_interval",
                    rule=f"Diabetes: HbA1c at least every {_interval(rules.hba1c_interval_months)}",
                    cutoff=_months_before(today, rules.hba1c_interval_months),
                    result=facts.latest(HBA1C),
                    basis=diabetes[0],
                    topic="Diabetes",
                    noun="HbA1c",
                    consider="an HbA1c",
                    goal_id="hba1c",
                    none="none is on file",
                    patient="You are due for an A1c blood test. It shows your average blood sugar.",
                )
            )
        if "kidney_test_interval" in enabled and kidney:
            kidney_result = _latest_kidney_test(facts)
            items.append(
                self._interval_item(
                    facts,
                    rule_id="kidney_test_interval",
                    rule="Diabetes or chronic kidney disease: eGFR or creatinine at least every "
                    f"{_interval(rules.kidney_test_interval_months)}",
                    cutoff=_months_before(today, rules.kidney_test_interval_months),
                    result=kidney_result,
                    basis=kidney[0],
                    topic=_kidney_topic(kidney[0]),
                    noun="kidney function test",
                    consider="a kidney function test",
                    goal_id="egfr" if kidney_result in facts.results_for(EGFR) else None,
                    none="no eGFR or creatinine result is on file",
                    patient="You are due for a blood test that checks how well your kidneys work.",
                )
            )
        if "urine_albumin_interval" in enabled and kidney:
            items.append(
                self._interval_item(
                    facts,
                    rule_id="urine_albumin_interval",
                    rule="Diabetes or chronic kidney disease: urine albumin/creatinine ratio at "
                    f"least every {_interval(rules.urine_albumin_interval_months)}",
                    cutoff=_months_before(today, rules.urine_albumin_interval_months),
                    result=facts.latest(UACR),
                    basis=kidney[0],
                    topic=_kidney_topic(kidney[0]),
                    noun="UACR",
                    consider="a urine albumin/creatinine ratio (UACR)",
                    goal_id="uacr",
                    none="none is on file",
                    patient="You are due for a urine test that checks your kidneys.",
                )
            )
        bp_control = (
            self._bp_control_item(facts, rules) if "bp_above_threshold" in enabled else None
        )
        items.append(bp_control)
        hypertension = facts.has_group("hypertension")
        age = facts.age
        if (
            "bp_screening" in enabled
            # With hypertension on the list, or readings above the threshold, the blood
            # pressure rule above says what matters; "screening up to date" would be noise.
            and not hypertension
            and bp_control is None
            and age is not None
            and age >= rules.bp_screening_min_age
        ):
            latest_bp = facts.blood_pressures[0] if facts.blood_pressures else None
            items.append(
                self._interval_item(
                    facts,
                    rule_id="bp_screening",
                    rule=f"Adults {rules.bp_screening_min_age} and older without hypertension "
                    f"on the problem list: blood pressure at least every "
                    f"{_interval(rules.bp_screening_interval_months)}",
                    cutoff=_months_before(today, rules.bp_screening_interval_months),
                    result=_Evidence(
                        phrase=f"{latest_bp.text()}{_on(latest_bp.date)}",
                        when=latest_bp.when,
                        resources=tuple(latest_bp.resources),
                    )
                    if latest_bp
                    else None,
                    basis=None,
                    topic="Blood pressure screening",
                    noun="",
                    consider="a blood pressure reading",
                    none="none is on file",
                    patient="You are due for a blood pressure check.",
                )
            )
        if (
            "lipid_screening" in enabled
            and age is not None
            and rules.lipid_min_age <= age <= rules.lipid_max_age
        ):
            items.append(
                self._interval_item(
                    facts,
                    rule_id="lipid_screening",
                    rule=f"Adults {rules.lipid_min_age} to {rules.lipid_max_age}: a lipid panel "
                    f"(LDL or total cholesterol) at least every "
                    f"{_interval(rules.lipid_interval_months)}",
                    cutoff=_months_before(today, rules.lipid_interval_months),
                    result=_latest_lipid(facts),
                    basis=None,
                    topic="Cholesterol",
                    noun="lipid panel",
                    consider="a lipid panel",
                    none="no cholesterol result is on file",
                    patient="You are due for a cholesterol blood test.",
                )
            )
        born = to_date(facts.snapshot.patient.get("birthDate"))
        if (
            "influenza_vaccine" in enabled
            and born is not None
            # Influenza vaccine is recommended from 6 months of age (CDC/ACIP).
            and born <= _months_before(today, 6)
        ):
            dose = facts.influenza_vaccinations[0] if facts.influenza_vaccinations else None
            items.append(
                self._interval_item(
                    facts,
                    rule_id="influenza_vaccine",
                    rule="Everyone 6 months and older: an influenza vaccine at least every "
                    f"{_interval(rules.influenza_interval_months)}",
                    cutoff=_months_before(today, rules.influenza_interval_months),
                    result=_Evidence(
                        phrase=f"{capitalize(dose.name)} given{_on(dose.date)}",
                        due_phrase=f"given{_on(dose.date)}",
                        when=dose.when,
                        resources=(dose.resource,),
                    )
                    if dose
                    else None,
                    basis=None,
                    topic="Influenza vaccine",
                    noun="",
                    consider="a flu vaccine",
                    none="none is on file",
                    patient="You are due for a flu shot. It helps protect you from the flu.",
                    record_type="Immunization",
                )
            )
        return [item for item in items if item is not None]

    @staticmethod
    def _interval_item(
        facts: ChartFacts,
        *,
        rule_id: str,
        rule: str,
        cutoff: date,
        result: Result | _Evidence | None,
        basis: Problem | None,
        topic: str,
        noun: str,
        consider: str,
        none: str,
        patient: str,
        record_type: str = "Observation",
        goal_id: str | None = None,
    ) -> _CareItem | None:
        """Met when the latest result is on or after `cutoff`; due when it is older or
        missing. `basis` is the problem the rule applies for (cited when nothing else is);
        without one the rule applies for the patient's age, and the Patient is cited."""
        snapshot = facts.snapshot
        groups = basis.group_ids if basis else frozenset()
        abnormal: str | None = None  # "above the reference range": never "up to date"
        if isinstance(result, Result):
            # A result the problem has a goal for is judged by the goal, as the assessment
            # and plan judges it (HbA1c 6.6% in diabetes is at goal, not "above the
            # reference range", which is written for people without diabetes).
            goal = assessment.goal_for(facts, assessment.knowledge(), goal_id) if goal_id else None
            verdict = assessment.goal_status(goal, result) if goal else None
            if goal is not None and verdict is not None:
                # In the goal's own words, as the assessment and plan says it ("reduced",
                # "albuminuria"), else "above goal".
                abnormal = None if verdict == "at goal" else goal.words.get(verdict, verdict)
                rule = f"{rule}; {goal.cite.label}: {goal.text}"
            else:
                abnormal, range_rule = _abnormal(facts, result)
                if range_rule:
                    rule = f"{rule}; {range_rule}"
            name = "" if result.name.lower() == noun.lower() else f"{result.name} "
            result = _Evidence(
                phrase=f"{name}{result.value_text()}{_on(result.date)}",
                when=result.when,
                resources=(result.resource,),
            )
        if result is None:
            if not facts.complete(record_type):
                return None  # what the app could not read may well be there
            cited = _cite(snapshot, basis.condition if basis else snapshot.patient)
            return _CareItem(
                rule_id=rule_id,
                due=True,
                groups=groups,
                statement=Statement(
                    text=f"{topic}: consider {consider} — {none}", citations=cited, rule=rule
                ),
                plan_text=f"Consider {consider} — {none}",
                patient_text=patient,
            )
        taken = to_date(result.when)
        if taken is None:
            return None  # undated: neither "up to date" nor "older" can be said
        cited = _cite(snapshot, *result.resources, *([basis.condition] if basis else []))
        if taken >= cutoff and abnormal:
            # Tested within the interval but out of range: the test is current, the
            # problem is not "up to date".
            done = f"{noun} done within the interval" if noun else "done within the interval"
            return _CareItem(
                rule_id=rule_id,
                due=False,
                groups=groups,
                statement=Statement(
                    text=f"{topic}: {done}; {abnormal} — {result.phrase}",
                    citations=cited,
                    rule=rule,
                    brief=f"{topic}: {done}; {abnormal}",
                ),
            )
        if taken >= cutoff:
            up_to_date = f"{noun} up to date" if noun else "up to date"
            return _CareItem(
                rule_id=rule_id,
                due=False,
                groups=groups,
                statement=Statement(
                    text=f"{topic}: {up_to_date} — {result.phrase}",
                    citations=cited,
                    rule=rule,
                    brief=f"{topic}: {up_to_date}",
                ),
            )
        if not facts.newest_known(record_type):
            return None  # a newer one may be among what the app could not read
        evidence = (
            f"the latest, {result.due_phrase or result.phrase}, is older than the site's interval"
        )
        return _CareItem(
            rule_id=rule_id,
            due=True,
            groups=groups,
            statement=Statement(
                text=f"{topic}: consider {consider} — {evidence}",
                citations=cited,
                rule=rule,
                brief=f"{topic}: consider {consider} — the latest is older than the interval",
            ),
            plan_text=f"Consider {consider} — {evidence}",
            patient_text=patient,
        )

    @staticmethod
    def _bp_control_item(facts: ChartFacts, rules: CareGapRules) -> _CareItem | None:
        """Blood pressure at or above the site's threshold at the last readings (a gap for
        anyone); otherwise nothing."""
        snapshot = facts.snapshot
        if not facts.newest_known("Observation"):
            # The readings read may not be the last ones (a truncated, unsorted read): the
            # chart's current blood pressure could say the opposite.
            return None
        hypertension = facts.has_group("hypertension")
        rule = (
            f"Blood pressure at or above {rules.bp_systolic}/{rules.bp_diastolic} mmHg at the "
            f"last {rules.bp_readings} readings"
        )
        readings = facts.blood_pressures[: rules.bp_readings]
        if len(readings) == rules.bp_readings and all(
            r.at_or_above(rules.bp_systolic, rules.bp_diastolic) for r in readings
        ):
            ordered = list(reversed(readings))
            shown = _join([f"{r.text()}{_on(r.date)}" for r in ordered])
            count = _COUNT_WORDS.get(len(ordered))
            scope = f"the last {count} readings are" if count else "the most recent reading is"
            evidence = f"blood pressure {shown}: {scope} at or above the site's threshold"
            if hypertension:
                # "Reviewing treatment" presumes there is one: say so only when the list
                # holds a drug that treats hypertension, "starting" only when the list is
                # complete and holds none.
                treating = [
                    m
                    for m in facts.medications
                    if any("hypertension" in c.treats for c in m.classes)
                ]
                # A drug started or changed after the last reading is the review already made:
                # what is left is the follow-up reading (ACC/AHA 2017: monthly after a change
                # until at goal).
                changed = [m for m in treating if assessment.ordered_since(facts, m, readings[0])]
                if changed:
                    names = _join(
                        [
                            f"{MEDICATION_NAMES.note_name(m.name, m.ingredients)} ordered "
                            f"{m.authored}"
                            for m in changed
                        ]
                    )
                    consider = f"treatment changed ({names}): consider a follow-up reading"
                elif treating:
                    consider = "consider reviewing treatment"
                elif facts.complete("MedicationRequest"):
                    consider = "consider starting treatment (none on the medication list)"
                else:
                    consider = "consider whether treatment is needed"
                topic = "Hypertension"
            else:
                changed = []
                topic, consider = "Blood pressure", "consider evaluating for hypertension"
            return _CareItem(
                rule_id="bp_above_threshold",
                due=True,
                groups=frozenset({"hypertension"}),
                statement=Statement(
                    text=f"{topic}: {consider} — {evidence}",
                    citations=_cite(
                        snapshot,
                        *[res for r in ordered for res in r.resources],
                        *[m.request for m in changed],
                    ),
                    rule=rule,
                    brief=f"{topic}: {consider} — {scope} at or above the site's threshold",
                ),
                plan_text=f"{capitalize(consider)} — {evidence}",
                patient_text=(
                    f"Your blood pressure was {shown}. That is above your goal. "
                    + (
                        f"Your blood pressure medicine was changed on {changed[0].authored}. "
                        "Take it as your care team told you, and have your blood pressure "
                        "checked again."
                        if changed
                        else "Talk with your care team about it."
                    )
                ),
            )
        # Below the site's threshold is not "at goal": the assessment and plan judges control
        # against the patient's own goal (130/80 with diabetes or kidney disease), and a
        # care gap saying "below the threshold" beside "above goal" contradicted it.
        return None

    # -- assessment and plan ------------------------------------------------------------

    def assessment_plan(self, facts: ChartFacts, config: Mapping[str, Any]) -> list[Suggestion]:
        """One block per active problem (smartapp.suggestions.assessment, rules as data).

        What is due ("HbA1c due") is the care gaps' content: said only where they are shown.
        """
        out: list[Suggestion] = []
        found = assessment.blocks(
            facts,
            config.get("knowledge_dirs") or (),
            due=K.CARE_GAPS in K.enabled_kinds(config),
        )
        for index, block in enumerate(found):
            title = (
                f"{K.KIND_LABELS[K.ASSESSMENT_PLAN]}: {block.problem.name} (rule-based, for review)"
            )
            statements = list(block.statements)
            if facts.deceased and index == 0:
                statements.insert(0, self._deceased_statement(facts))
            out += [
                replace(
                    s,
                    extra={
                        **s.extra,
                        PROBLEM: block.problem.name,
                        PROBLEM_REFERENCE: block.problem.reference,
                    },
                )
                for s in self._suggestion(K.ASSESSMENT_PLAN, title, statements)
            ]
        return out

    # -- patient instructions ------------------------------------------------------------

    _PATIENT_RESULT = {
        "diabetes": "Your last A1c blood test was {value}{on}.",
        "hypertension": "Your last blood pressure was {value}{on}.",
        "ckd": "Your last kidney blood test ({name}) was {value}{on}.",
        "anemia": "Your last hemoglobin blood test was {value}{on}.",
        "gout": "Your last uric acid blood test was {value}{on}.",
    }

    def patient_instructions(
        self, facts: ChartFacts, config: Mapping[str, Any]
    ) -> list[Suggestion]:
        snapshot = facts.snapshot
        if facts.deceased:
            return []  # nothing is addressed to a patient who has died
        statements: list[Statement] = []
        told: set[str] = set()
        flagged = safety.flagged_medications(facts)
        for problem in facts.problems:
            # An umbrella group ("ascvd") is told by its member's own words ("heart disease").
            group = next((g for g in problem.groups if g.id not in told and not g.includes), None)
            if group is None:
                continue
            told.add(group.id)
            if group.id == "obesity":
                continue  # "we talked about your weight" would state a visit the chart lacks
            text = f"You have {group.lay}."
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
            if set(med.references) & flagged or med.on_hold:
                continue  # never reinforce a drug the medication card flags, or one on hold
            # One known ingredient names the drug plainly, unless it is a combination
            # ("sacubitril / valsartan" is not "valsartan").
            # Else the name as a note writes it ("allopurinol 100 mg", not the RxNorm display
            # "allopurinol 100 MG Oral Tablet").
            combined = " / " in med.name
            name = (
                med.ingredients[0]
                if len(med.ingredients) == 1 and not combined
                else MEDICATION_NAMES.note_name(med.name, med.ingredients)
            )
            statements.append(
                Statement(
                    text=f"Your medicine list includes {name}. Take it the way your care team "
                    "told you.",
                    citations=_cite_refs(snapshot, med.references),
                )
            )
        # What is due is the care gaps' content: not told where the clinician is not shown it.
        gaps = (
            self.find_gaps(facts, _rules(config)) if K.CARE_GAPS in K.enabled_kinds(config) else []
        )
        for gap in gaps:
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
        grade = config.get("reading_grade")
        if isinstance(grade, int) and grade <= PLAIN_GRADE:
            # The site asks for easier reading: leave out the terms in brackets.
            statements = [replace(s, text=_plain(s.text)) for s in statements]
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


#: At this Flesch-Kincaid grade and below ([after_visit_summary] reading_grade), patient
#: instructions leave out the medical terms in brackets ("irregular heartbeat (atrial
#: fibrillation)" becomes "irregular heartbeat"): long words weigh most in the grade.
PLAIN_GRADE = 5
_BRACKETED = re.compile(r"\s*\([^()]*\)")


def _plain(text: str) -> str:
    return _BRACKETED.sub("", text)


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
