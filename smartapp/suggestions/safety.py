"""Medication safety checks from the cited tables in `clinical/data/medication_safety.toml`.

Allergy and intolerance conflicts (by ingredient, and by class through the cross-reactivity
table), high-risk interactions, and contraindications in pregnancy, in children and with
kidney function or a high potassium. Each hit is a `SafetyFlag`: the statement text holds
only chart facts (drug names, values and dates from the cited resources), the rule id and
its source go to `Statement.rule_id` / `Statement.rule`. These are documentation aids that
point at the chart; they are not the EHR's order-time checking.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

from smartapp import clinical
from smartapp.fhir.snapshot import FHIRResource
from smartapp.suggestions.facts import (
    ChartFacts,
    Medication,
    Result,
    codes_in,
    concept_text,
    concept_words,
    date_part,
    format_number,
    listed_as,
    no_known_allergy,
    ref,
)
from smartapp.suggestions.terminology import MEDICATION_NAMES, RXNORM

TOPIC = "medication_safety"


@dataclass(frozen=True, kw_only=True)
class SafetyRule:
    id: str
    kind: str  # "allergy", "interaction", "duplicate", "contraindication"
    say: str
    cite: clinical.Source
    groups: tuple[str, ...]  # value set ids: (allergy, drug), (a, b) or (drug,)
    when: str | None = None
    result: str | None = None
    value: Decimal | None = None
    upper: Decimal | None = None
    #: A contraindication to starting the drug only: an order already on the list is not
    #: flagged (a proposed one is), and a plan option that would start it is held back.
    starting_only: bool = False

    @property
    def label(self) -> str:
        return f"{self.id}: {self.say} ({self.cite.label})"


@lru_cache(maxsize=1)
def rules() -> tuple[SafetyRule, ...]:
    sets = clinical.value_sets()
    found: list[SafetyRule] = []
    for kind, keys in (
        ("allergy", ("allergy", "drug")),
        ("interaction", ("a", "b")),
        ("duplicate", ()),
        ("contraindication", ("drug",)),
    ):
        for path, item in clinical.entries(TOPIC, kind):
            where = f"{path} {kind} {item.get('id')!r}"
            groups = tuple(str(item.get(k)) for k in keys)
            if kind == "duplicate":
                groups = tuple(str(g) for g in item.get("groups") or ())
                if len(groups) < 2:
                    raise clinical.KnowledgeError(f"{where}: needs groups = [two or more]")
            for group in groups:
                if group not in sets:
                    raise clinical.KnowledgeError(f"{where}: no value set {group!r}")
            if not item.get("id") or not item.get("say"):
                raise clinical.KnowledgeError(f"{where}: needs id and say")
            found.append(
                SafetyRule(
                    id=str(item["id"]),
                    kind=kind,
                    say=str(item["say"]),
                    cite=clinical.source(item.get("cite"), where=where),
                    groups=groups,
                    when=str(item["when"]) if item.get("when") else None,
                    result=str(item["result"]) if item.get("result") else None,
                    value=Decimal(str(item["value"])) if "value" in item else None,
                    upper=Decimal(str(item["upper"])) if "upper" in item else None,
                    starting_only=bool(item.get("starting_only", False)),
                )
            )
    return tuple(found)


#: The hints the engine raises from its own drug-class table, not from a safety rule.
_OWN_TOPICS = {
    "duplicate-same-drug": "one drug in more than one active order",
    "duplicate-class": "two drugs of one class",
}


def topic(rule_id: str) -> str:
    """What a medication hint is about, in the rule tables' own words ("interaction:
    Warfarin + Azole antifungals"), never the chart's: a CDS Hooks card renders Markdown
    in the EHR, and chart text is untrusted."""
    if rule_id in _OWN_TOPICS:
        return _OWN_TOPICS[rule_id]
    rule = next((r for r in rules() if r.id == rule_id), None)
    if rule is None:
        return "a medication safety check"
    sets = clinical.value_sets()
    titles = [sets[g].title for g in rule.groups]
    if rule.kind == "allergy":
        allergy, drug = titles
        same = rule.groups[0] == rule.groups[1]
        return f"allergy: {drug}" if same else f"allergy: {drug} with a {_lower(allergy)} allergy"
    if rule.kind == "interaction":
        return f"interaction: {titles[0]} + {titles[1]}"
    if rule.kind == "duplicate":
        return f"duplicate: {titles[0]} + {' or '.join(titles[1:])}"
    return f"{rule.kind}: {titles[0]}{_condition(rule, sets)}"


def _lower(title: str) -> str:
    """ "Penicillins" in mid-sentence; "NSAIDs" and "eGFR" as they are."""
    return title[0].lower() + title[1:] if title[1:2].islower() else title


def _condition(rule: SafetyRule, sets: Mapping[str, clinical.ValueSet]) -> str:
    """ " in pregnancy", " under age 12", " with eGFR below 30": when the rule applies."""
    result = _lower(sets[rule.result].title) if rule.result and rule.result in sets else rule.result
    value, upper = format_number(rule.value), format_number(rule.upper)
    return {
        "pregnant": " in pregnancy",
        "age_below": f" under age {value}",
        "result_below": f" with {result} below {value}",
        "result_above": f" with {result} above {value}",
        "result_at_least": f" with {result} {value} or more",
        "result_at_most": f" with {result} {value} or less",
        "result_between": f" with {result} {value}-{upper}",
    }.get(rule.when or "", "")


@dataclass(frozen=True, kw_only=True)
class SafetyFlag:
    rule: SafetyRule
    text: str
    #: What the statement cites: the orders, the allergy, the result, the pregnancy...
    references: tuple[str, ...]
    #: The medication orders the flag is about (patient instructions never reinforce them).
    medications: tuple[str, ...]


def _in_group(group: str, concept: Mapping[str, Any] | None) -> bool:
    return clinical.value_set(group).matches(concept)


def _med_refs(*meds: Medication) -> tuple[str, ...]:
    return tuple(dict.fromkeys(r for m in meds for r in m.references))


def _same_ingredient(allergy: FHIRResource, med: Medication) -> bool:
    allergy_codes = set(codes_in(allergy.get("code"), RXNORM))
    if allergy_codes & set(codes_in(med.concept, RXNORM)):
        return True
    words = concept_words(allergy.get("code"))
    if not words:
        return False
    if any(re.search(rf"\b{re.escape(name)}\b", words) for name in med.ingredients):
        return True
    return re.search(rf"\b{re.escape(words)}\b", concept_words(med.concept)) is not None


def _allergy_phrase(allergy: FHIRResource) -> str:
    substance = concept_text(allergy.get("code"))
    phrase = f"an allergy or intolerance to {substance} is recorded"
    if allergy.get("criticality") == "high":
        phrase += " (criticality high)"
    return phrase


def checked_medications(facts: ChartFacts) -> list[Medication]:
    """What the checks look at: current therapy and the proposed orders (drafts, proposals,
    plans), which are about to become therapy; their flags say they are proposed."""
    current = {m.reference for m in facts.medications}
    return facts.medications + [m for m in facts.proposed_medications if m.reference not in current]


def allergy_flags(facts: ChartFacts, table: Sequence[SafetyRule]) -> list[SafetyFlag]:
    flags: list[SafetyFlag] = []
    for allergy in facts.allergies:
        if no_known_allergy(allergy) or not concept_text(allergy.get("code")):
            continue
        for med in checked_medications(facts):
            hit = next(
                (
                    r
                    for r in table
                    if r.kind == "allergy"
                    and _in_group(r.groups[0], allergy.get("code"))
                    and _in_group(r.groups[1], med.concept)
                ),
                None,
            )
            if hit is None and _same_ingredient(allergy, med):
                hit = SAME_INGREDIENT
            if hit is None:
                continue
            flags.append(
                SafetyFlag(
                    rule=hit,
                    text=f"Allergy alert: {med.name} {listed_as([med])}, and "
                    f"{_allergy_phrase(allergy)}",
                    references=_med_refs(med) + (ref(allergy),),
                    medications=_med_refs(med),
                )
            )
    return flags


SAME_INGREDIENT = SafetyRule(
    id="allergy-ingredient",
    kind="allergy",
    say="an active or proposed order contains a substance the patient is recorded as allergic to",
    cite=clinical.Source(source="AllergyIntolerance.code matched to the order", version="R4"),
    groups=(),
)


def interaction_flags(facts: ChartFacts, table: Sequence[SafetyRule]) -> list[SafetyFlag]:
    flags: list[SafetyFlag] = []
    for rule in (r for r in table if r.kind == "interaction"):
        checked = checked_medications(facts)
        first = [m for m in checked if _in_group(rule.groups[0], m.concept)]
        second = [m for m in checked if _in_group(rule.groups[1], m.concept)]
        for a in first:
            for b in second:
                if a.reference == b.reference:
                    continue
                flags.append(
                    SafetyFlag(
                        rule=rule,
                        text=f"Interaction: {a.name} and {b.name} {listed_as([a, b])}",
                        references=_med_refs(a, b),
                        medications=_med_refs(a, b),
                    )
                )
    return flags


def _latest_of(facts: ChartFacts, value_set_id: str) -> Result | None:
    codes = clinical.value_set(value_set_id).code_keys(clinical.LOINC)
    return facts.latest(codes)


def _on(result: Result) -> str:
    day = result.date
    return f" on {day}" if day else ""


def contraindication_flags(facts: ChartFacts, table: Sequence[SafetyRule]) -> list[SafetyFlag]:
    flags: list[SafetyFlag] = []
    context = facts.context
    patient_ref = ref(facts.snapshot.patient) if facts.snapshot.patient else None
    for rule in (r for r in table if r.kind == "contraindication"):
        meds = [m for m in checked_medications(facts) if _in_group(rule.groups[0], m.concept)]
        if rule.starting_only:
            meds = [m for m in meds if m.proposed]
        if not meds:
            continue
        if rule.when == "pregnant":
            if not context.pregnant:
                continue
            evidence = context.pregnancy[0]
            what = concept_text(evidence.get("code")) or "pregnancy"
            answer = concept_text(evidence.get("valueCodeableConcept"))
            if answer:
                what = f"{what}: {answer}"
            for med in meds:
                flags.append(
                    SafetyFlag(
                        rule=rule,
                        text=f"Pregnancy: {med.name} {listed_as([med])}, and the chart "
                        f"records {what}",
                        references=_med_refs(med) + tuple(ref(e) for e in context.pregnancy),
                        medications=_med_refs(med),
                    )
                )
        elif rule.when == "age_below":
            if context.age is None or rule.value is None or context.age >= rule.value:
                continue
            born = date_part(facts.snapshot.patient.get("birthDate"))
            for med in meds:
                flags.append(
                    SafetyFlag(
                        rule=rule,
                        text=f"Child (born {born}): {med.name} {listed_as([med])}",
                        references=_med_refs(med) + ((patient_ref,) if patient_ref else ()),
                        medications=_med_refs(med),
                    )
                )
        elif rule.result:
            result = _result_holding(facts, rule)
            if result is None:
                continue
            names = " and ".join(m.name for m in meds)
            verb = listed_as(meds)
            flags.append(
                SafetyFlag(
                    rule=rule,
                    text=f"{names} {verb}, and the latest {result.name} is "
                    f"{result.value_text()}{_on(result)}",
                    references=_med_refs(*meds) + (result.reference,),
                    medications=_med_refs(*meds),
                )
            )
    return flags


_RESULT_WHENS = (
    "result_below",
    "result_between",
    "result_above",
    "result_at_least",
    "result_at_most",
)


def _result_holding(facts: ChartFacts, rule: SafetyRule) -> Result | None:
    """The latest result that makes a result rule hold, or None."""
    if rule.when not in _RESULT_WHENS or not rule.result or rule.value is None:
        return None
    result = _latest_of(facts, rule.result)
    number = result.value.number if result is not None else None
    if result is None or number is None:
        return None
    value, upper = rule.value, rule.upper if rule.upper is not None else rule.value
    holds = {
        "result_below": number < value,
        "result_above": number > value,
        "result_at_least": number >= value,
        "result_at_most": number <= value,
        "result_between": value <= number < upper,
    }[rule.when]
    return result if holds else None


def contraindicated(facts: ChartFacts, group: str) -> list[tuple[SafetyRule, FHIRResource]]:
    """The safety rules that hold against adding a drug of a group (a value set id) for
    this patient, each with the resource that makes it hold: a contraindication (an MRA
    with a potassium of 5.0 or more), a recorded allergy to the group, or an interaction
    with a current medication (aspirin with warfarin). What keeps a plan option from
    suggesting that drug."""
    held: list[tuple[SafetyRule, FHIRResource]] = []
    for rule in rules():
        if rule.kind == "allergy" and rule.groups[1] == group:
            held += [
                (rule, allergy)
                for allergy in facts.allergies
                if not no_known_allergy(allergy) and _in_group(rule.groups[0], allergy.get("code"))
            ]
        elif rule.kind == "interaction" and group in rule.groups:
            # As the interaction checks read: current therapy and the proposed orders.
            other = rule.groups[1] if rule.groups[0] == group else rule.groups[0]
            held += [
                (rule, m.request) for m in checked_medications(facts) if _in_group(other, m.concept)
            ]
        if rule.kind != "contraindication" or rule.groups[0] != group:
            continue
        if rule.when == "pregnant" and facts.context.pregnant:
            held.append((rule, facts.context.pregnancy[0]))
        elif rule.when == "age_below":
            age = facts.context.age
            if age is not None and rule.value is not None and age < rule.value:
                held.append((rule, facts.snapshot.patient))
        elif rule.result:
            result = _result_holding(facts, rule)
            if result is not None:
                held.append((rule, result.resource))
    return held


def holding_phrase(facts: ChartFacts, rule: SafetyRule, resource: FHIRResource) -> str | None:
    """Why an allergy or interaction rule holds against a drug, in a note's words ("an
    allergy or intolerance to Aspirin is recorded"; "on warfarin 5 mg: raises the risk of
    bleeding"; "with warfarin 5 mg proposed (not yet signed): …"); None for a
    contraindication (its reading says why)."""
    if rule.kind == "allergy":
        return _allergy_phrase(resource)
    if rule.kind == "interaction":
        med = next((m for m in checked_medications(facts) if m.request is resource), None)
        if med is not None:
            name = MEDICATION_NAMES.note_name(med.name, med.ingredients)
            on = f"with {name} proposed (not yet signed)" if med.proposed else f"on {name}"
            return f"{on}: {rule.say}"
    return None


def duplicate_flags(facts: ChartFacts, table: Sequence[SafetyRule]) -> list[SafetyFlag]:
    """Orders in a rule's first group together with orders in any of its other groups."""
    flags: list[SafetyFlag] = []
    checked = checked_medications(facts)
    for rule in (r for r in table if r.kind == "duplicate"):
        first = [m for m in checked if _in_group(rule.groups[0], m.concept)]
        others = [
            m
            for m in checked
            if m not in first and any(_in_group(g, m.concept) for g in rule.groups[1:])
        ]
        if not first or not others:
            continue
        meds = first + others
        flags.append(
            SafetyFlag(
                rule=rule,
                text=f"Duplicate therapy: {' and '.join(m.name for m in meds)} {listed_as(meds)}",
                references=_med_refs(*meds),
                medications=_med_refs(*meds),
            )
        )
    return flags


def safety_flags(facts: ChartFacts) -> list[SafetyFlag]:
    """Every hit of the safety tables on this chart, allergy conflicts first."""
    table = rules()
    return (
        allergy_flags(facts, table)
        + contraindication_flags(facts, table)
        + interaction_flags(facts, table)
        + duplicate_flags(facts, table)
    )


def flagged_medications(facts: ChartFacts) -> set[str]:
    """References of the orders with an open safety flag (duplicates included)."""
    flagged = {r for f in safety_flags(facts) for r in f.medications}
    by_ingredient: dict[str, list[Medication]] = {}
    by_group: dict[str, list[Medication]] = {}
    for med in facts.medications:
        for ingredient in med.ingredients:
            by_ingredient.setdefault(ingredient, []).append(med)
        for group in dict.fromkeys(c.duplicate_group for c in med.classes):
            by_group.setdefault(group, []).append(med)
    for meds in by_ingredient.values():
        if len(meds) > 1:
            flagged.update(r for m in meds for r in m.references)
    for meds in by_group.values():
        if len({frozenset(m.ingredients) for m in meds}) > 1:
            flagged.update(r for m in meds for r in m.references)
    return flagged
