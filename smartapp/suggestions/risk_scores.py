"""Risk scores computed from the chart (CHA2DS2-VASc), their components as data.

What each score counts lives in `smartapp/clinical/data/risk_scores.toml` (conditions by
problem group or by SNOMED CT / ICD-10-CM code, age and sex, each with its points and the
score's guideline); this module only reads the chart against it. A score is a
documentation aid for the clinician's note, never order-time decision support.
See https://doi.org/10.1161/CIR.0000000000001193 (2023 ACC/AHA/ACCP/HRS AF guideline).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from smartapp import clinical
from smartapp.fhir.snapshot import FHIRResource
from smartapp.suggestions.context import usable
from smartapp.suggestions.facts import (
    ChartFacts,
    codes_in,
    concept_text,
    concept_words,
    problem_groups,
    status_code,
)
from smartapp.suggestions.terminology import GROUPS_BY_ID, ICD10CM, SNOMED

#: Conditions that do not count: the chart says they are not (or not yet) diagnoses.
_NOT_DIAGNOSED = {"refuted", "entered-in-error", "provisional", "differential"}

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True, kw_only=True)
class Component:
    id: str
    label: str
    points: int
    groups: frozenset[str] = frozenset()
    snomed: frozenset[str] = frozenset()
    icd10: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    not_words: tuple[str, ...] = ()
    min_age: int | None = None
    max_age: int | None = None
    sex: str | None = None

    @property
    def by_condition(self) -> bool:
        return bool(self.groups or self.snomed or self.icd10 or self.words)

    def matches(self, cond: Mapping[str, Any]) -> bool:
        if self.groups and {g.id for g in problem_groups(cond)} & self.groups:
            return True
        code = cond.get("code")
        if set(codes_in(code, SNOMED)) & self.snomed:
            return True
        icd = [c.replace(".", "").upper() for c in codes_in(code, ICD10CM)]
        prefixes = [p.replace(".", "").upper() for p in self.icd10]
        if any(c.startswith(p) for c in icd for p in prefixes):
            return True
        # Codes the component does not list (another stroke concept, a local code) fall
        # back to the words: an undercounted score would be silently low, while a counted
        # condition is named in the statement for the clinician to check.
        words = concept_words(code)
        return any(w in words for w in self.words) and not any(w in words for w in self.not_words)


@dataclass(frozen=True, kw_only=True)
class Score:
    id: str
    title: str
    problem: str
    components: tuple[Component, ...]
    cite: clinical.Source


@dataclass(frozen=True, kw_only=True)
class Hit:
    component: Component
    #: What the statement names: the condition's own text, "age 78", "female".
    phrase: str
    resource: FHIRResource


@dataclass(frozen=True, kw_only=True)
class Result:
    score: Score
    total: int
    hits: tuple[Hit, ...]
    #: The chart's conditions were not all read: the total is a lower bound.
    at_least: bool

    @property
    def total_words(self) -> str:
        word = _NUMBER_WORDS[self.total] if self.total < len(_NUMBER_WORDS) else str(self.total)
        return f"at least {word}" if self.at_least else word

    def text(self) -> str:
        """'CHA2DS2-VASc score four: Essential hypertension, age 78 (two points)'. Numbers
        the chart does not hold are words: the verifier checks every digit as a chart fact."""
        parts = [
            h.phrase
            + (f" ({_NUMBER_WORDS[h.component.points]} points)" if h.component.points > 1 else "")
            for h in self.hits
        ]
        found = ", ".join(parts) if parts else "none of its risk factors is on the chart"
        return f"{self.score.title} {self.total_words}: {found}"

    @property
    def resources(self) -> list[FHIRResource]:
        return [h.resource for h in self.hits]


def _strings(item: Mapping[str, Any], key: str, *, where: str) -> tuple[str, ...]:
    values = item.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise clinical.KnowledgeError(f"{where}: {key} must be a list of strings")
    return tuple(values)


def _component(item: Mapping[str, Any], *, where: str) -> Component:
    where = f"{where} component {item.get('id')!r}"
    if not item.get("id") or not item.get("label") or not isinstance(item.get("points"), int):
        raise clinical.KnowledgeError(f"{where}: needs id, label and points")
    groups = frozenset(_strings(item, "groups", where=where))
    if unknown := groups - set(GROUPS_BY_ID):
        raise clinical.KnowledgeError(f"{where}: no problem group {sorted(unknown)}")
    component = Component(
        id=str(item["id"]),
        label=str(item["label"]),
        points=int(item["points"]),
        groups=groups,
        snomed=frozenset(_strings(item, "snomed", where=where)),
        icd10=_strings(item, "icd10", where=where),
        words=tuple(w.lower() for w in _strings(item, "words", where=where)),
        not_words=tuple(w.lower() for w in _strings(item, "not_words", where=where)),
        min_age=int(item["min_age"]) if item.get("min_age") is not None else None,
        max_age=int(item["max_age"]) if item.get("max_age") is not None else None,
        sex=str(item["sex"]) if item.get("sex") else None,
    )
    if not (component.by_condition or component.min_age is not None or component.sex):
        raise clinical.KnowledgeError(f"{where}: counts nothing (conditions, age or sex)")
    if component.points >= len(_NUMBER_WORDS):
        raise clinical.KnowledgeError(f"{where}: points must be below ten")
    return component


@lru_cache(maxsize=8)
def _load(extra_dirs: tuple[Path, ...]) -> tuple[Score, ...]:
    scores: list[Score] = []
    for path, item in clinical.entries("risk_scores", "score", extra_dirs):
        where = f"{path} score {item.get('id')!r}"
        if not item.get("id") or not item.get("title") or not item.get("problem"):
            raise clinical.KnowledgeError(f"{where}: needs id, title and problem")
        if str(item["problem"]) not in GROUPS_BY_ID:
            raise clinical.KnowledgeError(f"{where}: no problem group {item['problem']!r}")
        components = tuple(_component(c, where=where) for c in item.get("component", []))
        if not components:
            raise clinical.KnowledgeError(f"{where}: needs at least one [[score.component]]")
        scores.append(
            Score(
                id=str(item["id"]),
                title=str(item["title"]),
                problem=str(item["problem"]),
                components=components,
                cite=clinical.source(item.get("cite"), where=where),
            )
        )
    return tuple(scores)


def scores(extra_dirs: Iterable[Path] = ()) -> tuple[Score, ...]:
    return _load(tuple(extra_dirs))


def _diagnosed(cond: Mapping[str, Any]) -> bool:
    return usable(cond) and status_code(cond.get("verificationStatus")) not in _NOT_DIAGNOSED


def compute(facts: ChartFacts, score: Score) -> Result | None:
    """The score for this patient, or None when it cannot be said (no age, or deceased)."""
    age = facts.age
    patient = facts.snapshot.patient
    if age is None or facts.deceased or not patient:
        return None
    conditions = [c for c in facts.snapshot.of_type("Condition") if c.get("id") and _diagnosed(c)]
    gender = patient.get("gender")
    hits: list[Hit] = []
    for component in score.components:
        if component.by_condition:
            found = next((c for c in conditions if component.matches(c)), None)
            if found is not None:
                # A problem group has its own block: its label says enough ("hypertension").
                # A history matched by code is named as the chart names it.
                name = component.label if component.groups else concept_text(found.get("code"))
                name = name or component.label
                hits.append(Hit(component=component, phrase=name, resource=found))
            continue
        if component.sex is not None:
            if gender == component.sex:
                hits.append(Hit(component=component, phrase=component.sex, resource=patient))
            continue
        if (component.min_age is None or age >= component.min_age) and (
            component.max_age is None or age <= component.max_age
        ):
            hits.append(Hit(component=component, phrase=f"age {age}", resource=patient))
    return Result(
        score=score,
        total=sum(h.component.points for h in hits),
        hits=tuple(hits),
        at_least=not facts.complete("Condition"),
    )


def for_problem(
    facts: ChartFacts, group_ids: Iterable[str], extra_dirs: Iterable[Path] = ()
) -> list[Result]:
    wanted = set(group_ids)
    out: list[Result] = []
    for score in scores(extra_dirs):
        if score.problem in wanted:
            result = compute(facts, score)
            if result is not None:
                out.append(result)
    return out


def by_id(facts: ChartFacts, score_id: str, extra_dirs: Iterable[Path] = ()) -> Result | None:
    score = next((s for s in scores(extra_dirs) if s.id == score_id), None)
    return compute(facts, score) if score is not None else None
