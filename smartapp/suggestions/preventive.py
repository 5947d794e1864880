"""Preventive care as rule packs: USPSTF screenings and the CDC immunization schedules.

Each pack is a data file `smartapp/clinical/data/preventive/<pack>.toml` (`pack`, `title`,
`[[rule]]` with ages, sex, pregnancy, smoking and BMI criteria, what excludes it, and the
`[[rule.done]]` code sets that meet it within `months` or by `doses`). A site turns packs
on or off with `[care_gaps] packs = [...]`. Each rule says its source and version in the
statement's rule line; each statement cites what made it due or up to date. A deceased
patient gets nothing; a rule outside the patient's age or sex never applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from smartapp import clinical
from smartapp.fhir.snapshot import FHIRResource
from smartapp.suggestions.facts import (
    ChartFacts,
    as_decimal,
    concept_text,
    date_part,
    describe,
    sort_time,
    to_date,
)
from smartapp.suggestions.interfaces import Citation, Statement

_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
PACK_YEARS = clinical.Code(system=clinical.SNOMED, code="401201003")
SMOKING_STATUS = "72166-2"
BMI = "39156-5"
#: Smoking-status answers (SNOMED CT, US Core) that mean the patient has ever smoked.
EVER_SMOKER = frozenset(
    {"449868002", "428041000124106", "8517006", "77176002", "428071000124103", "428061000124105"}
)


@dataclass(frozen=True, kw_only=True)
class Done:
    codes: clinical.ValueSet
    months: int | None = None
    doses: int = 1
    min_age: int | None = None


@dataclass(frozen=True, kw_only=True)
class Rule:
    pack: str
    id: str
    title: str
    rule: str
    cite: clinical.Source
    done: tuple[Done, ...]
    sex: str | None = None
    min_age: int | None = None
    max_age: int | None = None
    min_age_months: int | None = None
    max_age_months: int | None = None
    min_pack_years: Decimal | None = None
    ever_smoked: bool = False
    min_bmi: Decimal | None = None
    pregnant: bool = False
    #: Skipped in pregnancy: a pregnancy-specific rule applies instead.
    not_pregnant: bool = False
    excluded_by: clinical.ValueSet | None = None
    #: (age in months, doses due by then) for a childhood series.
    schedule: tuple[tuple[int, int], ...] = ()


def _set(item: Any, *, vs_id: str, cite: Mapping[str, Any], where: str) -> clinical.ValueSet:
    data = dict(item or {})
    data.setdefault("id", vs_id)
    data.setdefault("cite", cite)
    return clinical.parse_value_set(data, where=where)


def _int(item: Mapping[str, Any], key: str) -> int | None:
    return int(item[key]) if item.get(key) is not None else None


@lru_cache(maxsize=8)
def _load(extra_dirs: tuple[Path, ...]) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    for path in clinical.topic_files("preventive", extra_dirs):
        data = clinical.read_toml(path)
        pack = str(data.get("pack") or path.stem)
        for item in data.get("rule", []):
            where = f"{path} rule {item.get('id')!r}"
            if not item.get("id") or not item.get("title"):
                raise clinical.KnowledgeError(f"{where}: needs id and title")
            cite = item.get("cite")
            source = clinical.source(cite, where=where)
            done = tuple(
                Done(
                    codes=_set(d, vs_id=f"{item['id']}-done-{n}", cite=cite, where=where),
                    months=_int(d, "months"),
                    doses=int(d.get("doses", 1)),
                    min_age=_int(d, "min_age"),
                )
                for n, d in enumerate(item.get("done", []))
            )
            if not done:
                raise clinical.KnowledgeError(f"{where}: needs at least one [[rule.done]]")
            excluded = item.get("excluded_by")
            rules.append(
                Rule(
                    pack=pack,
                    id=str(item["id"]),
                    title=str(item["title"]),
                    rule=str(item.get("rule", "")),
                    cite=source,
                    done=done,
                    sex=str(item["sex"]) if item.get("sex") else None,
                    min_age=_int(item, "min_age"),
                    max_age=_int(item, "max_age"),
                    min_age_months=_int(item, "min_age_months"),
                    max_age_months=_int(item, "max_age_months"),
                    min_pack_years=as_decimal(item.get("min_pack_years")),
                    ever_smoked=bool(item.get("ever_smoked")),
                    min_bmi=as_decimal(item.get("min_bmi")),
                    pregnant=bool(item.get("pregnant")),
                    not_pregnant=bool(item.get("not_pregnant")),
                    excluded_by=(
                        _set(excluded, vs_id=f"{item['id']}-excluded", cite=cite, where=where)
                        if excluded
                        else None
                    ),
                    schedule=tuple((int(a), int(n)) for a, n in item.get("schedule", [])),
                )
            )
    return tuple(rules)


def rules(extra_dirs: Iterable[Path] = ()) -> tuple[Rule, ...]:
    return _load(tuple(extra_dirs))


def pack_ids(extra_dirs: Iterable[Path] = ()) -> tuple[str, ...]:
    return tuple(dict.fromkeys(r.pack for r in rules(extra_dirs)))


# -- the chart ---------------------------------------------------------------------------


def _cite(facts: ChartFacts, resources: Iterable[FHIRResource]) -> tuple[Citation, ...]:
    seen: dict[str, Citation] = {}
    for r in resources:
        reference = f"{r.get('resourceType')}/{r.get('id')}"
        seen.setdefault(
            reference, Citation(reference=reference, display=describe(r, facts.snapshot))
        )
    return tuple(seen.values())


def _when(resource: Mapping[str, Any]) -> str | None:
    for key in ("occurrenceDateTime", "performedDateTime", "effectiveDateTime", "issued"):
        if isinstance(resource.get(key), str):
            return str(resource[key])
    for key in ("performedPeriod", "effectivePeriod"):
        period = resource.get(key)
        if isinstance(period, Mapping) and isinstance(period.get("start"), str):
            return str(period["start"])
    return None


def _events(facts: ChartFacts, codes: clinical.ValueSet) -> list[FHIRResource]:
    """Completed events with these codes, newest first."""
    found = [r for r, parts in _completed_events(facts) if codes.matches_parts(parts)]
    found.sort(key=lambda r: sort_time(_when(r)), reverse=True)
    return found


def _completed_events(facts: ChartFacts) -> list[tuple[FHIRResource, clinical.ConceptParts]]:
    """The chart's completed, dated events with their codes read: once per snapshot, for
    every rule's value sets (each pack tries dozens on the same resources)."""
    return facts.snapshot.derived("preventive_events", lambda: _read_completed_events(facts))


def _read_completed_events(facts: ChartFacts) -> list[tuple[FHIRResource, clinical.ConceptParts]]:
    found: list[tuple[FHIRResource, clinical.ConceptParts]] = []
    for kind, field_name in (
        ("Immunization", "vaccineCode"),
        ("Procedure", "code"),
        ("Observation", "code"),
        ("DiagnosticReport", "code"),
    ):
        for resource in facts.snapshot.of_type(kind):
            if not resource.get("id") or _when(resource) is None:
                continue
            status = resource.get("status")
            if kind == "Immunization" and (status != "completed" or resource.get("isSubpotent")):
                continue
            if kind == "Procedure" and status not in (None, "completed"):
                continue
            if kind in ("Observation", "DiagnosticReport") and status in (
                "entered-in-error",
                "cancelled",
                "registered",
            ):
                continue
            parts = clinical.concept_parts(resource.get(field_name))
            if parts is not None:
                found.append((resource, parts))
    return found


def _months_before(day: date, months: int) -> date:
    index = day.year * 12 + (day.month - 1) - months
    year, month = divmod(index, 12)
    for candidate in (day.day, 30, 29, 28):
        try:
            return date(year, month + 1, candidate)
        except ValueError:
            continue
    raise AssertionError("unreachable")  # pragma: no cover


def _age_months(facts: ChartFacts) -> int | None:
    born = to_date(facts.snapshot.patient.get("birthDate"))
    if born is None:
        return None
    day = facts.as_of
    return (day.year - born.year) * 12 + day.month - born.month - (day.day < born.day)


def _latest_obs(facts: ChartFacts, system: str, code: str) -> FHIRResource | None:
    best: FHIRResource | None = None
    for obs in facts.snapshot.of_type("Observation"):
        codings = (obs.get("code") or {}).get("coding") or []
        if any(c.get("system") == system and c.get("code") == code for c in codings):
            if best is None or sort_time(_when(obs)) > sort_time(_when(best)):
                best = obs
    return best


def _value(obs: Mapping[str, Any] | None) -> Decimal | None:
    if obs is None:
        return None
    return as_decimal((obs.get("valueQuantity") or {}).get("value"))


def _ever_smoked(facts: ChartFacts) -> FHIRResource | None:
    status = _latest_obs(facts, clinical.LOINC, SMOKING_STATUS)
    if status is not None:
        codings = (status.get("valueCodeableConcept") or {}).get("coding") or []
        if any(c.get("code") in EVER_SMOKER for c in codings):
            return status
    years = _latest_obs(facts, PACK_YEARS.system, PACK_YEARS.code)
    value = _value(years)
    return years if value is not None and value > 0 else None


def _pregnant(facts: ChartFacts) -> FHIRResource | None:
    """What says the patient is pregnant (a current pregnancy Condition or a pregnancy-status
    Observation), from the one place that decides it (`suggestions.context`)."""
    evidence = facts.context.pregnancy
    return evidence[0] if evidence else None


def _excluded(facts: ChartFacts, rule: Rule) -> bool:
    if rule.excluded_by is None:
        return False
    for kind in ("Condition", "Procedure"):
        for resource in facts.snapshot.of_type(kind):
            if kind == "Condition" and (resource.get("verificationStatus") or {}).get(
                "coding", [{}]
            )[0].get("code") in ("refuted", "entered-in-error"):
                continue
            if rule.excluded_by.matches(resource.get("code")):
                return True
    return False


def _applies(facts: ChartFacts, rule: Rule) -> list[FHIRResource] | None:
    """None when the rule does not apply; else what beyond age and sex made it apply."""
    patient = facts.snapshot.patient
    age, months = facts.age, _age_months(facts)
    if rule.sex is not None and patient.get("gender") != rule.sex:
        return None
    if (rule.min_age is not None or rule.max_age is not None) and age is None:
        return None
    if age is not None:
        if rule.min_age is not None and age < rule.min_age:
            return None
        if rule.max_age is not None and age > rule.max_age:
            return None
    if rule.min_age_months is not None or rule.max_age_months is not None:
        if months is None:
            return None
        if rule.min_age_months is not None and months < rule.min_age_months:
            return None
        if rule.max_age_months is not None and months > rule.max_age_months:
            return None
    because: list[FHIRResource] = []
    if rule.pregnant:
        pregnancy = _pregnant(facts)
        if pregnancy is None:
            return None
        because.append(pregnancy)
    if rule.not_pregnant and _pregnant(facts) is not None:
        return None
    if rule.min_pack_years is not None:
        years = _latest_obs(facts, PACK_YEARS.system, PACK_YEARS.code)
        value = _value(years)
        if years is None or value is None or value < rule.min_pack_years:
            return None
        because.append(years)
    if rule.ever_smoked:
        smoked = _ever_smoked(facts)
        if smoked is None:
            return None
        because.append(smoked)
    if rule.min_bmi is not None:
        bmi = _latest_obs(facts, clinical.LOINC, BMI)
        value = _value(bmi)
        if bmi is None or value is None or value < rule.min_bmi:
            return None
        because.append(bmi)
    if _excluded(facts, rule):
        return None
    return because


def _doses_due(rule: Rule, months: int | None) -> int:
    if not rule.schedule or months is None:
        return 0
    due = [n for by, n in rule.schedule if months >= by]
    return max(due) if due else 0


def review(facts: ChartFacts, packs: Sequence[str] | None = None) -> list[tuple[bool, Statement]]:
    """(due, statement) for every applicable rule of the enabled packs."""
    if facts.deceased or not facts.snapshot.patient:
        return []
    out: list[tuple[bool, Statement]] = []
    months = _age_months(facts)
    for rule in rules():
        if packs is not None and rule.pack not in packs:
            continue
        because = _applies(facts, rule)
        if because is None:
            continue
        label = f"{rule.cite.label}: {rule.rule}" if rule.rule else rule.cite.label
        met: list[FHIRResource] | None = None
        partial: list[FHIRResource] = []
        needed = 1
        for done in rule.done:
            if done.min_age is not None and (facts.age or 0) < done.min_age:
                continue
            events = _events(facts, done.codes)
            if done.months is not None:
                start = _months_before(facts.as_of, done.months)
                events = [e for e in events if (to_date(_when(e)) or date.min) >= start]
            wanted = max(done.doses, _doses_due(rule, months)) if rule.schedule else done.doses
            needed = max(needed, wanted)
            if len(events) >= wanted and wanted > 0:
                met = events[:wanted]
                break
            if len(events) > len(partial):
                partial = events
        if rule.schedule and _doses_due(rule, months) == 0:
            continue  # a child not yet old enough for the first dose
        if met is not None:
            latest = met[0]
            text = f"{rule.title}: up to date ({_phrase(facts, latest)}"
            if len(met) > 1:
                text += f", {_WORDS.get(len(met), str(len(met)))} doses"
            text += ")"
            # The brief is the line when the result's own line is in another card (crossref).
            brief = f"{rule.title}: up to date"
            out.append(
                (
                    False,
                    Statement(text=text, citations=_cite(facts, met), rule=label, brief=brief),
                )
            )
            continue
        if partial and needed > 1:
            got = _WORDS.get(len(partial), str(len(partial)))
            of = _WORDS.get(needed, str(needed))
            last_dose = _phrase(facts, partial[0])
            text = f"{rule.title}: due, {got} of {of} doses on file (last {last_dose})"
            cited = [facts.snapshot.patient, *because, *partial]
        elif partial:
            text = f"{rule.title}: due (last {_phrase(facts, partial[0])})"
            cited = [facts.snapshot.patient, *because, *partial]
        else:
            last = _last_ever(facts, rule)
            if last is None and not _complete(facts):
                continue  # without the whole chart, "none on file" would be a guess
            text = f"{rule.title}: due ("
            text += f"last {_phrase(facts, last)})" if last is not None else "none on file)"
            cited = [facts.snapshot.patient, *because, *([last] if last is not None else [])]
        # The line when a result it states is stated in another card (crossref): still due.
        brief = (
            f"{rule.title}: due, none on file"
            if text.endswith("(none on file)")
            else f"{rule.title}: due"
        )
        out.append(
            (True, Statement(text=text, citations=_cite(facts, cited), rule=label, brief=brief))
        )
    return out


def _last_ever(facts: ChartFacts, rule: Rule) -> FHIRResource | None:
    found = [e for done in rule.done for e in _events(facts, done.codes)]
    found.sort(key=lambda r: sort_time(_when(r)), reverse=True)
    return found[0] if found else None


def _complete(facts: ChartFacts) -> bool:
    return all(facts.complete(kind) for kind in ("Immunization", "Procedure", "Observation"))


def _phrase(facts: ChartFacts, resource: FHIRResource) -> str:
    concept = resource.get("vaccineCode") or resource.get("code") or {}
    name = concept_text(concept)
    codes = {str(c.get("code")) for c in concept.get("coding") or [] if isinstance(c, Mapping)}
    if not name or name in codes:  # only a bare code: its number is no name
        name = "dose" if resource.get("resourceType") == "Immunization" else "result"
    when = date_part(_when(resource))
    return f"{name} on {when}" if when else name
