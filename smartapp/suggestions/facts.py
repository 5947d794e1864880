"""Reading FHIR R4 resources for the engines: codes, dates, quantities, results, medications.

Pure functions over the snapshot's JSON dicts (https://hl7.org/fhir/R4/). Every value
they hand back is the resource's own (a number as the EHR sent it, a date string cut to
its date part), so that statements built from them can be checked against their
citations. They tolerate what real charts hold: missing optional fields, components
(blood pressure), `medicationReference` to a listed or contained Medication, absolute
references, entered-in-error records.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import cached_property, lru_cache
from typing import Any

from smartapp import clinical
from smartapp.fhir.readers import codeable_text, codings
from smartapp.fhir.snapshot import ChartSnapshot, FHIRResource, reference_key
from smartapp.suggestions.context import PatientContext, pregnancy_evidence, usable
from smartapp.suggestions.terminology import (
    BP_DIASTOLIC,
    BP_PANEL,
    BP_SYSTOLIC,
    CVX,
    DRUG_CLASSES,
    ICD10CM,
    INFLUENZA_CVX,
    LAB_NAMES,
    LOINC,
    PROBLEM_GROUPS,
    RXNORM,
    SNOMED,
    DrugClass,
    ProblemGroup,
)

# -- codes -------------------------------------------------------------------------------


def codes_in(concept: Mapping[str, Any] | None, system: str) -> list[str]:
    return [str(c["code"]) for c in codings(concept) if c.get("system") == system and c.get("code")]


def has_code(concept: Mapping[str, Any] | None, system: str, codes: Iterable[str]) -> bool:
    wanted = set(codes)
    return any(code in wanted for code in codes_in(concept, system))


def concept_text(concept: Mapping[str, Any] | None) -> str:
    """What a person would call it: the text, else the first display, else the first code."""
    return codeable_text(concept) or ""


def concept_words(concept: Mapping[str, Any] | None) -> str:
    """Text and every display, lower-cased, for word matching."""
    if not isinstance(concept, Mapping):
        return ""
    parts = [str(concept.get("text") or "")]
    parts += [str(c.get("display") or "") for c in codings(concept)]
    return " ".join(parts).lower()


def status_code(concept: Mapping[str, Any] | None) -> str | None:
    for coding in codings(concept):
        if coding.get("code"):
            return str(coding["code"])
    return None


# -- dates -------------------------------------------------------------------------------

_FHIR_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2}))?)?)?)?")


def parse_when(value: Any) -> datetime | None:
    """A FHIR date, dateTime or instant as an aware datetime (partial dates: their start)."""
    if not isinstance(value, str):
        return None
    try:
        if "T" in value:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        match = _FHIR_DATE.match(value)
        if not match:
            return None
        year, month, day = (int(g) if g else 1 for g in match.groups()[:3])
        return datetime(year, month, day, tzinfo=UTC)
    except ValueError:
        return None


def date_part(value: str | None) -> str | None:
    """The date as the resource wrote it, no time: `2025-11-02T09:00:00Z` → `2025-11-02`."""
    if not isinstance(value, str):
        return None
    match = _FHIR_DATE.match(value)
    return value[: match.end(3) if match and match.group(3) else len(value.split("T")[0])]


def to_date(value: str | None) -> date | None:
    parsed = parse_when(value)
    return parsed.date() if parsed else None


def observation_when(obs: Mapping[str, Any]) -> str | None:
    for key in ("effectiveDateTime", "effectiveInstant"):
        if isinstance(obs.get(key), str):
            return str(obs[key])
    period = obs.get("effectivePeriod")
    if isinstance(period, Mapping):
        for key in ("start", "end"):
            if isinstance(period.get(key), str):
                return str(period[key])
    return obs.get("issued") if isinstance(obs.get("issued"), str) else None


def condition_onset(cond: Mapping[str, Any]) -> str | None:
    if isinstance(cond.get("onsetDateTime"), str):
        return str(cond["onsetDateTime"])
    period = cond.get("onsetPeriod")
    if isinstance(period, Mapping) and isinstance(period.get("start"), str):
        return str(period["start"])
    return None


_EPOCH = datetime(1, 1, 1, tzinfo=UTC)


def sort_time(value: str | None) -> datetime:
    return parse_when(value) or _EPOCH


# -- numbers and quantities ------------------------------------------------------------


def format_number(value: Any) -> str:
    """A number as the resource holds it: `7.2` stays `7.2`, `140` stays `140`, no exponent."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        text = repr(value)
        if "e" in text or "E" in text:
            text = format(Decimal(text), "f")
        return text
    return str(value)


def as_decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


#: UCUM codes shown the way clinicians write them (the verifier treats both as one unit).
UNIT_DISPLAY = {
    "mm[Hg]": "mmHg",
    "mL/min/{1.73_m2}": "mL/min/1.73 m2",
    "mL/min/1.73m2": "mL/min/1.73 m2",
    "Cel": "°C",
    "[degF]": "°F",
    "kg/m2": "kg/m2",
    "/min": "/min",
    "10*3/uL": "x10^3/uL",
    "10*6/uL": "x10^6/uL",
    "10*9/L": "x10^9/L",
    "10*12/L": "x10^12/L",
    "[iU]/L": "IU/L",
}


@dataclass(frozen=True, kw_only=True)
class Quantity:
    value: Any  # int, float or Decimal, as parsed from the resource
    unit: str | None = None
    comparator: str | None = None
    #: The UCUM code when the quantity carries one (`meq/L` where the display says
    #: "mEq/L", `[lb_av]` for "lb"): what unit comparisons and conversions read.
    code: str | None = None

    @property
    def ucum(self) -> str | None:
        return self.code or self.unit

    @property
    def number(self) -> Decimal | None:
        return as_decimal(self.value)

    def text(self) -> str:
        number = f"{self.comparator or ''}{format_number(self.value)}"
        if not self.unit:
            return number
        unit = UNIT_DISPLAY.get(self.unit, self.unit)
        return f"{number}{unit}" if unit == "%" else f"{number} {unit}"


UCUM_SYSTEM = "http://unitsofmeasure.org"


def quantity(data: Any) -> Quantity | None:
    if not isinstance(data, Mapping) or as_decimal(data.get("value")) is None:
        return None
    unit = data.get("unit") or data.get("code")
    comparator = data.get("comparator")
    system, code = data.get("system"), data.get("code")
    ucum = code if code and system in (None, UCUM_SYSTEM) else None
    return Quantity(
        value=data["value"],
        unit=str(unit) if unit else None,
        comparator=str(comparator) if comparator else None,
        code=str(ucum) if ucum else None,
    )


# -- observations ----------------------------------------------------------------------

_EXCLUDED_OBSERVATION_STATUS = {"entered-in-error", "cancelled"}


def usable_observation(obs: Mapping[str, Any]) -> bool:
    return obs.get("status") not in _EXCLUDED_OBSERVATION_STATUS


def loinc_codes(obs: Mapping[str, Any]) -> list[str]:
    return codes_in(obs.get("code"), LOINC)


def result_name(obs: Mapping[str, Any]) -> str:
    for code in loinc_codes(obs):
        if code in LAB_NAMES:
            return LAB_NAMES[code]
    return concept_text(obs.get("code")) or "result"


def result_key(obs: Mapping[str, Any]) -> str:
    """What makes two observations the same test: the LOINC code, else the first coding or text."""
    loinc = loinc_codes(obs)
    if loinc:
        return f"{LOINC}|{loinc[0]}"
    for coding in codings(obs.get("code")):
        if coding.get("code"):
            return f"{coding.get('system', '')}|{coding['code']}"
    return f"text|{concept_text(obs.get('code')).lower()}"


def ref(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


@dataclass(frozen=True, kw_only=True)
class Result:
    """One numeric observation: its value, date, flags, and the resource it came from."""

    resource: FHIRResource
    name: str
    key: str
    value: Quantity
    when: str | None
    #: The `result_tests.toml` test it belongs to (equivalent codes, staleness), if any.
    test: str | None = None

    @property
    def reference(self) -> str:
        return ref(self.resource)

    @property
    def date(self) -> str | None:
        return date_part(self.when)

    def value_text(self) -> str:
        return self.value.text()


@dataclass(frozen=True, kw_only=True)
class ResultTest:
    """One test reported under several codes (`clinical/data/result_tests.toml`)."""

    id: str
    valueset: clinical.ValueSet
    stale_months: int | None
    cite: clinical.Source

    @property
    def key(self) -> str:
        """The series key: the value set's first LOINC code, as `result_key` writes it."""
        first = next(c.code for c in self.valueset.codes if c.system == LOINC)
        return f"{LOINC}|{first}"


@lru_cache(maxsize=1)
def result_tests() -> tuple[ResultTest, ...]:
    sets = clinical.value_sets()
    found: list[ResultTest] = []
    for path, item in clinical.entries("result_tests", "test"):
        where = f"{path} test {item.get('id')!r}"
        vs = sets.get(str(item.get("valueset")))
        if vs is None or not any(c.system == LOINC for c in vs.codes):
            raise clinical.KnowledgeError(f"{where}: needs a value set of LOINC codes")
        stale = item.get("stale_months")
        if stale is not None and (not isinstance(stale, int) or stale < 1):
            raise clinical.KnowledgeError(f"{where}: stale_months must be a whole number >= 1")
        found.append(
            ResultTest(
                id=str(item["id"]),
                valueset=vs,
                stale_months=stale,
                cite=clinical.source(item.get("cite"), where=where),
            )
        )
    return tuple(found)


def test_of(obs: Mapping[str, Any]) -> ResultTest | None:
    """The test whose LOINC codes the observation carries (codes only: no text matching)."""
    codes = set(loinc_codes(obs))
    if not codes:
        return None
    return next((t for t in result_tests() if codes & t.valueset.code_keys(LOINC)), None)


#: Two results of one test at one time whose values differ by less than this are one.
_SAME_VALUE = Decimal("0.02")


def _same_measurement(a: Result, b: Result) -> bool:
    """One measurement sent twice (under two codes, or in two units)."""
    if a.test is None or a.test != b.test or a.when is None or a.when != b.when:
        return False
    # Conversions live with the assessment's goals (conversions.toml, UCUM): one place.
    from smartapp.suggestions.assessment import values_in

    first = a.value.number
    converted = values_in(a.test, b, a.value.ucum or a.value.unit)
    second = converted[0] if converted else None
    if first is None or second is None:
        return False
    scale = max(abs(first), abs(second))
    return scale == 0 or abs(first - second) <= _SAME_VALUE * scale


def numeric_results(snapshot: ChartSnapshot) -> dict[str, list[Result]]:
    """Numeric observations grouped by test, newest first (blood pressure panels excluded).

    Equivalent codes are one series (`result_tests.toml`): the latest HbA1c is the newest
    under any of its codes, and one measurement sent under two codes or units is kept once.
    """
    grouped: dict[str, list[Result]] = defaultdict(list)
    for obs in snapshot.of_type("Observation"):
        if not usable_observation(obs) or not obs.get("id"):
            continue
        value = quantity(obs.get("valueQuantity"))
        if value is None:
            continue
        test = test_of(obs)
        key = test.key if test is not None else result_key(obs)
        grouped[key].append(
            Result(
                resource=obs,
                name=result_name(obs),
                key=key,
                value=value,
                when=observation_when(obs),
                test=test.id if test is not None else None,
            )
        )
    for key, items in grouped.items():
        # Of one measurement sent twice, keep the one in the series' usual unit, so that
        # it compares with the others as sent.
        usual = Counter(r.value.unit for r in items)
        items.sort(
            key=lambda r: (sort_time(r.when), usual[r.value.unit], r.reference), reverse=True
        )
        kept: list[Result] = []
        for item in items:
            if not any(_same_measurement(k, item) for k in kept):
                kept.append(item)
        grouped[key] = kept
    return dict(grouped)


def months_between(earlier: date, later: date) -> int:
    """Whole months from `earlier` to `later` (as a person counts them)."""
    months = (later.year - earlier.year) * 12 + later.month - earlier.month
    return months - 1 if later.day < earlier.day else months


def age_note(result: Result, as_of: date) -> str:
    """ " (14 months old)" when the result is older than its test's staleness window."""
    test = next((t for t in result_tests() if t.id == result.test), None)
    taken = to_date(result.when)
    if test is None or test.stale_months is None or taken is None:
        return ""
    months = months_between(taken, as_of)
    if months < test.stale_months:
        return ""
    return f" ({months} month old)" if months == 1 else f" ({months} months old)"


# Flags ---------------------------------------------------------------------------------

_INTERPRETATION_WORDS = {
    "H": "high",
    "HH": "critically high",
    "HU": "very high",
    "L": "low",
    "LL": "critically low",
    "LU": "very low",
    "A": "abnormal",
    "AA": "critically abnormal",
    ">": "above the measurable range",
    "<": "below the measurable range",
}


def interpretation_flag(obs: Mapping[str, Any]) -> str | None:
    """The lab's own flag in words ("high"), or None when normal or not given."""
    for concept in obs.get("interpretation") or []:
        for coding in codings(concept):
            word = _INTERPRETATION_WORDS.get(str(coding.get("code", "")))
            if word:
                return word
        text = concept.get("text") if isinstance(concept, Mapping) else None
        if isinstance(text, str) and text.strip().lower() in {"high", "low", "abnormal"}:
            return text.strip().lower()
    return None


@dataclass(frozen=True, kw_only=True)
class RangeCheck:
    direction: str  # "above" or "below"
    range_text: str  # "4.0–5.6 %", from the resource's own values


def reference_range_check(obs: Mapping[str, Any], value: Quantity) -> RangeCheck | None:
    """Whether the value is outside the observation's (first, numeric) reference range."""
    number = value.number
    if number is None:
        return None
    for item in obs.get("referenceRange") or []:
        if not isinstance(item, Mapping):
            continue
        low, high = quantity(item.get("low")), quantity(item.get("high"))
        if low is None and high is None:
            continue
        bound = high or low
        unit = bound.unit if bound is not None else None
        if value.unit and unit and _unit_key(unit) != _unit_key(value.unit):
            continue  # a range in other units says nothing about this value
        parts = [format_number(q.value) for q in (low, high) if q is not None]
        if low is not None and high is not None:
            shown = f"{parts[0]}-{parts[1]}"
        elif low is not None:
            shown = f"at least {parts[0]}"
        else:
            shown = f"up to {parts[0]}"
        if unit:
            display = UNIT_DISPLAY.get(unit, unit)
            shown = f"{shown}{display}" if display == "%" else f"{shown} {display}"
        if low is not None and low.number is not None and number < low.number:
            return RangeCheck(direction="below", range_text=shown)
        if high is not None and high.number is not None and number > high.number:
            return RangeCheck(direction="above", range_text=shown)
        return None
    return None


def _unit_key(unit: str) -> str:
    return UNIT_DISPLAY.get(unit, unit).replace(" ", "").lower()


# Blood pressure --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BloodPressure:
    systolic: Quantity
    diastolic: Quantity
    when: str | None
    resources: tuple[FHIRResource, ...]

    @property
    def references(self) -> tuple[str, ...]:
        return tuple(ref(r) for r in self.resources)

    @property
    def date(self) -> str | None:
        return date_part(self.when)

    def text(self) -> str:
        unit = self.systolic.unit or self.diastolic.unit
        shown = UNIT_DISPLAY.get(unit, unit) if unit else None
        numbers = f"{format_number(self.systolic.value)}/{format_number(self.diastolic.value)}"
        return f"{numbers} {shown}" if shown else numbers

    def at_or_above(self, systolic: int, diastolic: int) -> bool:
        s, d = self.systolic.number, self.diastolic.number
        return (s is not None and s >= systolic) or (d is not None and d >= diastolic)


def _component(obs: Mapping[str, Any], loinc: Iterable[str]) -> Quantity | None:
    for comp in obs.get("component") or []:
        if isinstance(comp, Mapping) and has_code(comp.get("code"), LOINC, loinc):
            return quantity(comp.get("valueQuantity"))
    return None


def _bp_key(when: str | None, systolic: Quantity, diastolic: Quantity) -> tuple[Any, ...]:
    return (sort_time(when), systolic.value, systolic.ucum, diastolic.value, diastolic.ucum)


def blood_pressures(snapshot: ChartSnapshot) -> list[BloodPressure]:
    """Blood pressure readings, newest first: panels with components, or paired
    systolic and diastolic observations taken at the same time."""
    readings: list[BloodPressure] = []
    lone: dict[str, dict[str, tuple[FHIRResource, Quantity]]] = defaultdict(dict)
    for obs in snapshot.of_type("Observation"):
        if not usable_observation(obs) or not obs.get("id"):
            continue
        code = obs.get("code")
        when = observation_when(obs)
        if has_code(code, LOINC, BP_PANEL) or (
            obs.get("component") and _component(obs, BP_SYSTOLIC) is not None
        ):
            systolic, diastolic = _component(obs, BP_SYSTOLIC), _component(obs, BP_DIASTOLIC)
            if systolic is not None and diastolic is not None:
                readings.append(
                    BloodPressure(
                        systolic=systolic, diastolic=diastolic, when=when, resources=(obs,)
                    )
                )
            continue
        value = quantity(obs.get("valueQuantity"))
        if value is None or when is None:
            continue
        if has_code(code, LOINC, BP_SYSTOLIC):
            lone[when]["systolic"] = (obs, value)
        elif has_code(code, LOINC, BP_DIASTOLIC):
            lone[when]["diastolic"] = (obs, value)
    # A panel and separate systolic and diastolic resources of the same time and values
    # are one reading (some EHRs send both): counted once, citing all three.
    panels = {_bp_key(r.when, r.systolic, r.diastolic): i for i, r in enumerate(readings)}
    for when, pair in lone.items():
        if "systolic" in pair and "diastolic" in pair:
            (s_obs, s_val), (d_obs, d_val) = pair["systolic"], pair["diastolic"]
            same = panels.get(_bp_key(when, s_val, d_val))
            if same is not None:
                panel = readings[same]
                readings[same] = replace(panel, resources=(*panel.resources, s_obs, d_obs))
                continue
            readings.append(
                BloodPressure(systolic=s_val, diastolic=d_val, when=when, resources=(s_obs, d_obs))
            )
    readings.sort(key=lambda r: (sort_time(r.when), r.references), reverse=True)
    return readings


# -- conditions ------------------------------------------------------------------------

_INACTIVE_CLINICAL = {"inactive", "remission", "resolved"}
_BAD_VERIFICATION = {"refuted", "entered-in-error"}
#: A provisional or differential diagnosis is a hypothesis, not a current problem.
_NOT_CURRENT_VERIFICATION = _BAD_VERIFICATION | {"provisional", "differential"}
#: Gestational diabetes is not diabetes mellitus: it gets none of the diabetes rules.
_GESTATIONAL_DIABETES_SNOMED = {"11687002", "40801000119106"}


def gestational_diabetes(cond: Mapping[str, Any]) -> bool:
    code = cond.get("code")
    if has_code(code, SNOMED, _GESTATIONAL_DIABETES_SNOMED):
        return True
    if any(c.upper().startswith("O24.4") for c in codes_in(code, ICD10CM)):
        return True
    return "gestational" in concept_words(code)


def active_condition(cond: Mapping[str, Any]) -> bool:
    if not usable(cond):
        return False
    if status_code(cond.get("verificationStatus")) in _NOT_CURRENT_VERIFICATION:
        return False
    clinical = status_code(cond.get("clinicalStatus"))
    if clinical is None:
        return not (cond.get("abatementDateTime") or cond.get("abatementPeriod"))
    return clinical not in _INACTIVE_CLINICAL


def problem_groups(cond: Mapping[str, Any]) -> list[ProblemGroup]:
    """The table's groups this condition belongs to (a code can be in two: E11.22).

    Codes decide when they match any group; the text decides only for conditions whose
    codes the table does not know, so "Anemia in chronic kidney disease" (D63.1) is
    anaemia, not also CKD.
    """
    code = cond.get("code")
    if gestational_diabetes(cond):
        return []
    snomed = set(codes_in(code, SNOMED))
    icd = [c.replace(".", "").upper() for c in codes_in(code, ICD10CM)]
    by_code = [
        group
        for group in PROBLEM_GROUPS
        if snomed & group.snomed
        or any(c.startswith(prefix.replace(".", "")) for c in icd for prefix in group.icd10)
    ]
    if by_code:
        return _with_umbrellas(by_code)
    words = concept_words(code)
    return _with_umbrellas(
        [
            group
            for group in PROBLEM_GROUPS
            if any(_has_word(words, w) for w in group.words)
            and not any(w in words for w in group.not_words)
        ]
    )


def _with_umbrellas(groups: list[ProblemGroup]) -> list[ProblemGroup]:
    """The groups and every umbrella group that includes one of them ("ascvd" for "cad")."""
    ids = {g.id for g in groups}
    return [g for g in PROBLEM_GROUPS if g.id in ids or g.includes & ids]


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![a-z]){re.escape(word)}", text) is not None


@dataclass(frozen=True, kw_only=True)
class Problem:
    condition: FHIRResource
    name: str
    onset: str | None
    groups: tuple[ProblemGroup, ...]

    @property
    def reference(self) -> str:
        return ref(self.condition)

    @property
    def group_ids(self) -> frozenset[str]:
        return frozenset(g.id for g in self.groups)


def active_problems(snapshot: ChartSnapshot) -> list[Problem]:
    """Active conditions, one per diagnosis (the earliest onset wins), oldest first."""
    chosen: dict[str, Problem] = {}
    for cond in snapshot.of_type("Condition"):
        if not cond.get("id") or not active_condition(cond):
            continue
        name = concept_text(cond.get("code"))
        if not name:
            continue
        first = next((c for c in codings(cond.get("code")) if c.get("code")), None)
        key = f"{first.get('system')}|{first['code']}" if first else f"text|{name.lower()}"
        problem = Problem(
            condition=cond,
            name=name,
            onset=condition_onset(cond),
            groups=tuple(problem_groups(cond)),
        )
        current = chosen.get(key)
        if current is None or (
            problem.onset
            and (not current.onset or sort_time(problem.onset) < sort_time(current.onset))
        ):
            chosen[key] = problem
    return sorted(chosen.values(), key=lambda p: (sort_time(p.onset), p.name.lower()))


# -- medications -------------------------------------------------------------------------

#: A draft order has not been signed, and a proposal or plan is not an order: none of them
#: is something the patient takes. On-hold orders are current (shown as on hold).
_CURRENT_STATUS = {"active", "on-hold"}
_ORDER_INTENTS = {
    "order",
    "original-order",
    "reflex-order",
    "filler-order",
    "instance-order",
}
#: MedicationStatement statuses that mean the patient takes the drug now.
_STATEMENT_CURRENT = {"active", "intended"}


def current_medication_request(mr: Mapping[str, Any]) -> bool:
    if not usable(mr):
        return False
    if mr.get("resourceType") == "MedicationStatement":
        return mr.get("status") in _STATEMENT_CURRENT
    return (
        mr.get("status", "active") in _CURRENT_STATUS
        and mr.get("intent", "order") in _ORDER_INTENTS
        and not mr.get("doNotPerform")
    )


@dataclass(frozen=True, kw_only=True)
class Medication:
    request: FHIRResource
    concept: Mapping[str, Any]
    name: str
    #: The MedicationRequest and, when it points at one in the snapshot, the Medication.
    references: tuple[str, ...]
    classes: tuple[DrugClass, ...]
    ingredients: tuple[str, ...]

    @property
    def reference(self) -> str:
        return ref(self.request)

    @property
    def authored(self) -> str | None:
        return date_part(self.request.get("authoredOn"))

    @property
    def asserted(self) -> str | None:
        """When a MedicationStatement was recorded (dateAsserted, else its effective date)."""
        when = self.request.get("dateAsserted")
        if not isinstance(when, str):
            period = self.request.get("effectivePeriod")
            when = self.request.get("effectiveDateTime") or (
                period.get("start") if isinstance(period, Mapping) else None
            )
        return date_part(when) if isinstance(when, str) else None

    @property
    def on_hold(self) -> bool:
        return self.request.get("status") == "on-hold"

    @property
    def reported(self) -> bool:
        """From a MedicationStatement (what the patient or a record says is taken)."""
        return self.request.get("resourceType") == "MedicationStatement"

    @property
    def intended(self) -> bool:
        """A MedicationStatement saying the patient is about to start it (`intended`)."""
        return self.reported and self.request.get("status") == "intended"

    @property
    def proposed(self) -> bool:
        """A draft order, a proposal or a plan: checked like an order, never therapy."""
        return not self.reported and proposed_medication_request(self.request)

    @property
    def source_phrase(self) -> str:
        """What the chart holds for it: "an active order", "reported as taken", ..."""
        if self.proposed:
            return "a proposed order (not yet signed)"
        if self.intended:
            return "reported as about to be started"
        return "reported as taken" if self.reported else "an active order"

    @property
    def dosage(self) -> str | None:
        key = "dosage" if self.reported else "dosageInstruction"
        for dosage in self.request.get(key) or []:
            if isinstance(dosage, Mapping) and isinstance(dosage.get("text"), str):
                text = str(dosage["text"]).strip()
                if text:
                    return text
        return None


def medication_concept(
    mr: Mapping[str, Any], snapshot: ChartSnapshot
) -> tuple[Mapping[str, Any] | None, tuple[str, ...]]:
    """The medication's code (inline, or from the referenced Medication) and what to cite."""
    if isinstance(mr.get("medicationCodeableConcept"), Mapping):
        return mr["medicationCodeableConcept"], (ref(mr),)
    reference = (mr.get("medicationReference") or {}).get("reference")
    if isinstance(reference, str):
        medication = snapshot.resolve(reference, within=dict(mr))
        if medication is not None and isinstance(medication.get("code"), Mapping):
            if reference.startswith("#"):
                return medication["code"], (ref(mr),)  # contained: citing the request cites it
            return medication["code"], (ref(mr), reference_key(reference))
    display = (mr.get("medicationReference") or {}).get("display")
    if isinstance(display, str) and display.strip():
        return {"text": display.strip()}, (ref(mr),)
    return None, (ref(mr),)


def drug_classes(concept: Mapping[str, Any]) -> tuple[tuple[DrugClass, ...], tuple[str, ...]]:
    """The classes and ingredient names the table finds in a medication's code."""
    rxcuis = set(codes_in(concept, RXNORM))
    words = concept_words(concept)
    classes: list[DrugClass] = []
    ingredients: list[str] = []
    for cls in DRUG_CLASSES:
        for rxcui, name in cls.ingredients.items():
            if rxcui in rxcuis or re.search(rf"\b{re.escape(name)}\b", words):
                if cls not in classes:
                    classes.append(cls)
                if name not in ingredients:
                    ingredients.append(name)
    return tuple(classes), tuple(ingredients)


#: Intents that are not orders: a suggestion (`proposal`) or an intention (`plan`).
_PROPOSED_INTENTS = {"proposal", "plan"}


def proposed_medication_request(mr: Mapping[str, Any]) -> bool:
    """A draft order, or a proposal or plan not withdrawn: something no one has ordered yet."""
    if not usable(mr) or mr.get("resourceType") != "MedicationRequest" or mr.get("doNotPerform"):
        return False
    status = mr.get("status", "active")
    if status == "draft":
        return True
    return mr.get("intent") in _PROPOSED_INTENTS and status in _CURRENT_STATUS


def _medications(
    snapshot: ChartSnapshot,
    sources: Iterable[FHIRResource],
    wanted: Callable[[Mapping[str, Any]], bool],
) -> list[Medication]:
    meds: list[Medication] = []
    for mr in sources:
        if not mr.get("id") or not wanted(mr):
            continue
        concept, references = medication_concept(mr, snapshot)
        if concept is None:
            continue
        name = concept_text(concept)
        if not name:
            continue
        classes, ingredients = drug_classes(concept)
        meds.append(
            Medication(
                request=mr,
                concept=concept,
                name=name,
                references=references,
                classes=classes,
                ingredients=ingredients,
            )
        )
    meds.sort(key=lambda m: (m.name.lower(), m.reference))
    return meds


def current_medications(snapshot: ChartSnapshot) -> list[Medication]:
    """What the patient takes now: current orders and MedicationStatements (active, intended)."""
    sources = snapshot.of_type("MedicationRequest") + snapshot.of_type("MedicationStatement")
    return _medications(snapshot, sources, current_medication_request)


def renewed_orders(snapshot: ChartSnapshot, meds: Sequence[Medication]) -> frozenset[str]:
    """The current orders that repeat an earlier order of the same product (a renewal, not a
    change of therapy): same RxNorm code, or the same name where neither is coded."""

    def product(mr: Mapping[str, Any]) -> frozenset[str]:
        concept, _ = medication_concept(mr, snapshot)
        codes = frozenset(codes_in(concept, RXNORM))
        return codes or frozenset({concept_text(concept).casefold()} - {""})

    earlier = [
        (product(mr), parse_when(mr.get("authoredOn")))
        for mr in snapshot.of_type("MedicationRequest")
        if mr.get("status") != "entered-in-error"
    ]
    renewed = set()
    for med in meds:
        if med.request.get("resourceType") != "MedicationRequest":
            continue
        mine, when = product(med.request), parse_when(med.request.get("authoredOn"))
        if when is not None and any(
            other_when is not None and other_when < when and mine & other
            for other, other_when in earlier
        ):
            renewed.add(med.reference)
    return frozenset(renewed)


def listed_as(meds: Sequence[Medication]) -> str:
    """ "is an active order", "are reported as taken", "are on the medication list" (mixed)."""
    phrases = {m.source_phrase for m in meds}
    if len(meds) == 1:
        return "is " + meds[0].source_phrase
    if phrases == {"an active order"}:
        return "are active orders"
    if phrases == {"a proposed order (not yet signed)"}:
        return "are proposed orders (not yet signed)"
    if len(phrases) == 1:
        return "are " + phrases.pop()
    proposed = [m.name for m in meds if m.proposed]
    if proposed:
        return f"are on the medication list or proposed ({', '.join(proposed)}: not yet signed)"
    return "are on the medication list"


def proposed_medications(snapshot: ChartSnapshot) -> list[Medication]:
    """Drafts, proposals and plans: shown as "proposed, not yet ordered", never as therapy."""
    return _medications(
        snapshot, snapshot.of_type("MedicationRequest"), proposed_medication_request
    )


# -- allergies ---------------------------------------------------------------------------

NO_KNOWN_ALLERGY = {"716186003", "409137002", "428607008", "429625007"}


def active_allergy(allergy: Mapping[str, Any]) -> bool:
    if not usable(allergy):
        return False
    if status_code(allergy.get("verificationStatus")) in _BAD_VERIFICATION:
        return False
    return status_code(allergy.get("clinicalStatus")) in (None, "active")


#: How charts write "no known allergies" in text (normalised: lower case, no punctuation).
NO_KNOWN_ALLERGY_TEXT = {
    "nkda",
    "nka",
    "nkma",
    "no known allergies",
    "no known allergy",
    "no known drug allergies",
    "no known drug allergy",
    "no known medication allergies",
    "none known",
    "no allergies",
}


def no_known_allergy(allergy: Mapping[str, Any]) -> bool:
    if has_code(allergy.get("code"), SNOMED, NO_KNOWN_ALLERGY):
        return True
    text = re.sub(r"[^a-z ]+", " ", concept_words(allergy.get("code"))).split()
    return " ".join(text) in NO_KNOWN_ALLERGY_TEXT


def reactions(allergy: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """(manifestations, severity) per reaction, in the chart's words."""
    found: list[tuple[str, str | None]] = []
    for reaction in allergy.get("reaction") or []:
        if not isinstance(reaction, Mapping):
            continue
        names = [concept_text(m) for m in reaction.get("manifestation") or []]
        names = [n for n in names if n]
        if names:
            severity = reaction.get("severity")
            found.append((", ".join(names), str(severity) if severity else None))
    return found


# -- immunizations -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Vaccination:
    """One dose given (Immunization with status completed), and when."""

    resource: FHIRResource
    name: str
    when: str

    @property
    def date(self) -> str | None:
        return date_part(self.when)


_FLU_WORDS = re.compile(r"(?<![a-z])(?:influenza|flu)(?![a-z])")


def is_influenza_vaccine(concept: Mapping[str, Any] | None) -> bool:
    return has_code(concept, CVX, INFLUENZA_CVX) or bool(_FLU_WORDS.search(concept_words(concept)))


def influenza_vaccinations(snapshot: ChartSnapshot) -> list[Vaccination]:
    """Influenza doses given, newest first. Doses not given (`not-done`), entered in error,
    subpotent, or with no date do not count: none of them protects the patient."""
    found: list[Vaccination] = []
    for imm in snapshot.of_type("Immunization"):
        if not imm.get("id") or imm.get("status") != "completed" or imm.get("isSubpotent"):
            continue
        when = imm.get("occurrenceDateTime")
        if not isinstance(when, str) or to_date(when) is None:
            continue
        if is_influenza_vaccine(imm.get("vaccineCode")):
            name = concept_text(imm.get("vaccineCode")) or "influenza vaccine"
            found.append(Vaccination(resource=imm, name=name, when=when))
    found.sort(key=lambda v: (sort_time(v.when), ref(v.resource)), reverse=True)
    return found


# -- the patient -------------------------------------------------------------------------


def age_on(patient: Mapping[str, Any], day: date) -> int | None:
    born = to_date(patient.get("birthDate"))
    if born is None:
        return None
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def deceased(patient: Mapping[str, Any]) -> bool:
    return patient.get("deceasedBoolean") is True or isinstance(
        patient.get("deceasedDateTime"), str
    )


def deceased_text(patient: Mapping[str, Any]) -> str:
    """What every draft says first about a patient who has died, from Patient.deceased[x]."""
    when = date_part(patient.get("deceasedDateTime"))
    return f"The patient died on {when}" if when else "The chart records that the patient has died"


def as_of(snapshot: ChartSnapshot) -> date:
    """The day the chart was read: care-gap intervals count back from it."""
    moment = snapshot.fetched_at or datetime.now(UTC)
    return moment.date()


def capitalize(text: str) -> str:
    """Capitalise a sentence's first letter, leaving `eGFR` and `pH` alone."""
    if len(text) > 1 and text[0].islower() and text[1].islower():
        return text[0].upper() + text[1:]
    return text


# -- describing a resource (the sidebar shows this next to each citation) ---------------


def describe(resource: Mapping[str, Any] | None, snapshot: ChartSnapshot | None = None) -> str:
    """A short, factual label for a cited resource, from its own values."""
    if resource is None:
        return "not in the chart"
    rtype = resource.get("resourceType")
    if rtype == "Observation":
        name = result_name(resource)
        when = date_part(observation_when(resource))
        systolic, diastolic = _component(resource, BP_SYSTOLIC), _component(resource, BP_DIASTOLIC)
        if systolic is not None and diastolic is not None:
            bp = BloodPressure(systolic=systolic, diastolic=diastolic, when=None, resources=())
            value = bp.text()
            name = "Blood pressure"
        else:
            q = quantity(resource.get("valueQuantity"))
            value = q.text() if q else concept_text(resource.get("valueCodeableConcept")) or ""
            name = capitalize(name)
        return " ".join(p for p in (name, value, f"({when})" if when else "") if p)
    if rtype == "Condition":
        onset = date_part(condition_onset(resource))
        name = concept_text(resource.get("code")) or "Condition"
        return f"{name} (onset {onset})" if onset else name
    if rtype == "MedicationRequest":
        concept = None
        if snapshot is not None:
            concept, _ = medication_concept(resource, snapshot)
        elif isinstance(resource.get("medicationCodeableConcept"), Mapping):
            concept = resource["medicationCodeableConcept"]
        name = concept_text(concept) or "Medication order"
        authored = date_part(resource.get("authoredOn"))
        return f"{name} (ordered {authored})" if authored else name
    if rtype == "MedicationStatement":
        concept = None
        if snapshot is not None:
            concept, _ = medication_concept(resource, snapshot)
        elif isinstance(resource.get("medicationCodeableConcept"), Mapping):
            concept = resource["medicationCodeableConcept"]
        name = concept_text(concept) or "Medication statement"
        status = resource.get("status")
        asserted = date_part(resource.get("dateAsserted"))
        parts = [p for p in (status, f"recorded {asserted}" if asserted else None) if p]
        return f"{name} ({', '.join(parts)})" if parts else name
    if rtype == "Medication":
        return concept_text(resource.get("code")) or "Medication"
    if rtype == "AllergyIntolerance":
        return f"Allergy: {concept_text(resource.get('code')) or 'unspecified'}"
    if rtype == "Patient":
        return "Patient record"
    if rtype == "Encounter":
        return "Encounter"
    if rtype == "Immunization":
        given = date_part(resource.get("occurrenceDateTime"))
        name = concept_text(resource.get("vaccineCode")) or "Immunization"
        return f"{name} (given {given})" if given else name
    text = concept_text(resource.get("code")) if isinstance(resource.get("code"), Mapping) else ""
    return f"{rtype}: {text}" if text else str(rtype)


# -- everything the rules read, computed once per snapshot ---------------------------

#: Snapshot problems after which a search's results may be missing some resources.
#: A skipped resource (invalid, hostile, an unknown modifier) may be the very one a rule
#: looks for.
_INCOMPLETE = frozenset(
    {
        "truncated",
        "search_failed",
        "scope_not_granted",
        "invalid_resource",
        "unsupported_modifier",
    }
)


class ChartFacts:
    """The snapshot read once: results by test, blood pressures, problems, medications."""

    def __init__(self, snapshot: ChartSnapshot) -> None:
        self.snapshot = snapshot

    @classmethod
    def of(cls, snapshot: ChartSnapshot) -> ChartFacts:
        """The snapshot's facts, read once for all its kinds (and kept with the snapshot,
        which stays in memory across the launch's requests): every kind's rules ask for the
        same results, problems and medications, and each `ChartFacts` reads them anew."""
        return snapshot.derived("chart_facts", lambda: cls(snapshot))

    @cached_property
    def results(self) -> dict[str, list[Result]]:
        return numeric_results(self.snapshot)

    @cached_property
    def _series_codes(self) -> dict[str, frozenset[str]]:
        """The LOINC codes each series' results carry (read once: rules ask per code)."""
        return {
            key: frozenset(code for r in items for code in loinc_codes(r.resource))
            for key, items in self.results.items()
        }

    @cached_property
    def blood_pressures(self) -> list[BloodPressure]:
        return blood_pressures(self.snapshot)

    @cached_property
    def problems(self) -> list[Problem]:
        return active_problems(self.snapshot)

    @cached_property
    def medications(self) -> list[Medication]:
        return current_medications(self.snapshot)

    @cached_property
    def renewals(self) -> frozenset[str]:
        """Current orders renewing an earlier order of the same product (not a change)."""
        return renewed_orders(self.snapshot, self.medications)

    @cached_property
    def proposed_medications(self) -> list[Medication]:
        return proposed_medications(self.snapshot)

    @cached_property
    def allergies(self) -> list[FHIRResource]:
        return [
            a
            for a in self.snapshot.of_type("AllergyIntolerance")
            if a.get("id") and active_allergy(a)
        ]

    @cached_property
    def influenza_vaccinations(self) -> list[Vaccination]:
        return influenza_vaccinations(self.snapshot)

    @cached_property
    def as_of(self) -> date:
        return as_of(self.snapshot)

    @cached_property
    def age(self) -> int | None:
        """Whole years on the as-of day, from birthDate (None when the chart has none)."""
        return age_on(self.snapshot.patient, self.as_of)

    @cached_property
    def deceased(self) -> bool:
        return deceased(self.snapshot.patient)

    @cached_property
    def context(self) -> PatientContext:
        """Pregnancy, age band, deceased: what every kind must honour."""
        return PatientContext(
            age=self.age,
            deceased=self.deceased,
            pregnancy=pregnancy_evidence(
                self.snapshot.of_type("Condition"), self.snapshot.of_type("Observation")
            ),
        )

    def complete(self, resource_type: str) -> bool:
        """Whether the chart holds every resource of this type the EHR has: the scope was
        granted and the search neither failed nor stopped early. Only then may a rule say
        that something is *not* on file."""
        if resource_type in self.snapshot.not_granted:
            return False
        return not any(
            p.resource_type == resource_type and p.code in _INCOMPLETE
            for p in self.snapshot.problems
        )

    def newest_known(self, resource_type: str) -> bool:
        """Whether the newest resources of this type are in the chart read: the search was
        complete, or it stopped at the page cap having read newest first. Otherwise a
        "latest" value may be older than one the app did not read, and no rule may say
        what the latest value is or whether it is at goal."""
        if resource_type in self.snapshot.not_granted:
            return False
        for p in self.snapshot.problems:
            if p.resource_type != resource_type:
                continue
            if p.code == "search_failed" or (p.code == "truncated" and not p.newest_first):
                return False
        return True

    def latest_word(self, resource_type: str = "Observation") -> str:
        """'latest', or 'latest read' when the newest may not have been read."""
        return "latest" if self.newest_known(resource_type) else "latest read"

    def results_for(self, loinc: Iterable[str]) -> list[Result]:
        """Every result of the series these codes belong to, newest first (one series per
        test: asking for 4548-4 finds an HbA1c sent as 59261-8 too)."""
        wanted = set(loinc)
        found = [
            r
            for key, items in self.results.items()
            if not wanted.isdisjoint(self._series_codes[key])
            for r in items
        ]
        found.sort(key=lambda r: (sort_time(r.when), r.reference), reverse=True)
        return found

    def latest(self, loinc: Iterable[str]) -> Result | None:
        found = self.results_for(loinc)
        return found[0] if found else None

    def problems_in(self, group: str) -> list[Problem]:
        return [p for p in self.problems if group in p.group_ids]

    def has_group(self, group: str) -> bool:
        return any(group in p.group_ids for p in self.problems)

    def medications_for(self, problem: Problem) -> list[Medication]:
        return [m for m in self.medications if any(problem.group_ids & c.treats for c in m.classes)]
