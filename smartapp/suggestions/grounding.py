"""The grounding verifier: every statement shown must trace to the resources it cites.

Run over every engine's output (rule-based or LLM). A statement passes when it cites at
least one resource that is in the chart snapshot, and every number, date and drug name
in its text appears in those cited resources: numbers compare by value and, when the
statement gives a unit, by unit (`7.2 %` = `7.2%`, `7.20` = `7.2`, `mm[Hg]` = `mmHg`);
dates match in ISO and common written forms (`2025-11-02`, `2 Nov 2025`, `Nov 2025`);
drug names match the cited orders' codings and text. What fails is dropped, or kept and
marked unverified, as the site configures. Background: HL7 AI Transparency on FHIR,
https://build.fhir.org/ig/HL7/aitransparency-ig/
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from smartapp.fhir.snapshot import ChartSnapshot, reference_key
from smartapp.suggestions.facts import age_on, as_of, concept_text
from smartapp.suggestions.interfaces import Statement, Suggestion, Verification
from smartapp.suggestions.terminology import KNOWN_DRUG_NAMES

# -- units ------------------------------------------------------------------------------

#: Spellings of a unit → one canonical key (lower case, no spaces). Only units a
#: statement could plausibly carry; an unknown word after a number is not a unit.
_UNIT_ALIASES: dict[str, str] = {
    "%": "%",
    "percent": "%",
    "mg/dl": "mg/dl",
    "mmol/l": "mmol/l",
    "meq/l": "mmol/l",
    "mmol/mol": "mmol/mol",
    "mmhg": "mmhg",
    "mm[hg]": "mmhg",
    "mm hg": "mmhg",
    "g/dl": "g/dl",
    "g/l": "g/l",
    "mg/l": "mg/l",
    "mg/g": "mg/g",
    "mg/mmol": "mg/mmol",
    "ng/ml": "ng/ml",
    "pg/ml": "pg/ml",
    "miu/l": "miu/l",
    "uiu/ml": "miu/l",
    "µiu/ml": "miu/l",
    "u/l": "u/l",
    "iu/l": "u/l",
    "[iu]/l": "u/l",
    "units/l": "u/l",
    "kg/m2": "kg/m2",
    "kg/m²": "kg/m2",
    "kg": "kg",
    "lb": "lb",
    "lbs": "lb",
    "[lb_av]": "lb",
    "cm": "cm",
    "mm": "mm",
    "in": "in",
    "[in_i]": "in",
    "mg": "mg",
    "mcg": "ug",
    "ug": "ug",
    "µg": "ug",
    "g": "g",
    "ml": "ml",
    "l": "l",
    "unt": "u",
    "units": "u",
    "unit": "u",
    "iu": "u",
    "unt/ml": "u/ml",
    "units/ml": "u/ml",
    "mg/ml": "mg/ml",
    "bpm": "/min",
    "/min": "/min",
    "beats/min": "/min",
    "beats/minute": "/min",
    "{beats}/min": "/min",
    "breaths/min": "/min",
    "breaths/minute": "/min",
    "{breaths}/min": "/min",
    "°c": "cel",
    "cel": "cel",
    "degc": "cel",
    "°f": "degf",
    "[degf]": "degf",
    "degf": "degf",
    "ml/min/1.73m2": "ml/min/1.73m2",
    "ml/min/{1.73_m2}": "ml/min/1.73m2",
    "ml/min/1.73 m2": "ml/min/1.73m2",
    "ml/min/1.73m²": "ml/min/1.73m2",
    "ml/min/1.73 m²": "ml/min/1.73m2",
    "ml/min": "ml/min",
    "10*3/ul": "10^9/l",
    "10^3/ul": "10^9/l",
    "x10^3/ul": "10^9/l",
    "x 10^3/ul": "10^9/l",
    "10*9/l": "10^9/l",
    "10^9/l": "10^9/l",
    "x10^9/l": "10^9/l",
    "k/ul": "10^9/l",
    "10*6/ul": "10^12/l",
    "10^6/ul": "10^12/l",
    "x10^6/ul": "10^12/l",
    "10*12/l": "10^12/l",
    "10^12/l": "10^12/l",
    "x10^12/l": "10^12/l",
    "m/ul": "10^12/l",
}


def canonical_unit(unit: str | None) -> str | None:
    """One key per unit however it is spelt (UCUM code, display, or what a clinician types)."""
    if not unit:
        return None
    key = unit.strip().lower()
    if key in _UNIT_ALIASES:
        return _UNIT_ALIASES[key]
    squashed = key.replace(" ", "").replace("{", "").replace("}", "").replace("_", "")
    squashed = squashed.replace("²", "2").replace("µ", "u")
    return _UNIT_ALIASES.get(squashed, squashed)


_UNIT_PATTERN = "|".join(
    re.escape(alias).replace(r"\ ", r"\s*")
    for alias in sorted(_UNIT_ALIASES, key=len, reverse=True)
)
# A unit after a number ends at a non-letter, so "g" never matches the start of "given".
_UNIT_AFTER = re.compile(rf"\s?(?P<unit>{_UNIT_PATTERN})(?![A-Za-z])", re.IGNORECASE)

# -- reading numbers and dates out of text -------------------------------------------------

_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ),
        start=1,
    )
    for name in names
}
_MONTH = r"(?P<month>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(?P<day>\d{1,2})(?:st|nd|rd|th)?"
_YEAR = r"(?P<year>\d{4})"

#: (pattern, precision); tried in order, each match blanked out before the next pattern.
_DATE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"\b(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})"
            r"(?:T(?P<time>\d{2}:\d{2})(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?(?![\d])"
        ),
        "day",
    ),
    (re.compile(r"\b(?P<year>\d{4})/(?P<month>\d{1,2})/(?P<day>\d{1,2})\b"), "day"),
    (re.compile(rf"\b{_DAY}\s+{_MONTH},?\s+{_YEAR}\b", re.IGNORECASE), "day"),
    (re.compile(rf"\b{_MONTH}\s+{_DAY},?\s+{_YEAR}\b", re.IGNORECASE), "day"),
    (re.compile(r"\b(?P<a>\d{1,2})/(?P<b>\d{1,2})/(?P<year>\d{4})\b"), "day-ambiguous"),
    (re.compile(rf"\b{_MONTH},?\s+{_YEAR}\b", re.IGNORECASE), "month"),
    (re.compile(r"\b(?P<year>\d{4})-(?P<month>\d{2})(?![\d-])"), "month"),
)
_TIME = re.compile(r"(?<![\d:])(?P<time>\d{1,2}:\d{2})(?::\d{2})?(?![\d:])")
# "1. ", "2) ", "(3) " at the start of a line are list numbers, not values.
_ORDINAL = re.compile(r"(?m)^\s*(?:\(\d{1,2}\)|\d{1,2}[.)])\s+")
# LOINC codes ("4548-4": up to five digits, a hyphen, one check digit) are not values.
_LOINC_LIKE = re.compile(r"(?<![\w.])\d{3,5}-\d(?![\w.])")
_NUMBER = re.compile(r"(?P<num>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<frac>\.\d+)?")
_BP_PAIR = re.compile(
    r"(?<![\w.])(?P<sys>\d{2,3})\s*/\s*(?P<dia>\d{2,3})(?:\s*(?P<unit>mm\s*\[?hg\]?))?",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class DateMention:
    text: str
    #: Candidate ISO forms at the mention's precision ("2025-11-02", or "2025-11").
    forms: tuple[str, ...]


@dataclass(frozen=True)
class NumberMention:
    text: str
    value: Decimal
    unit: str | None  # canonical


def _blank(text: str, start: int, end: int) -> str:
    return text[:start] + " " * (end - start) + text[end:]


def find_dates(text: str) -> tuple[list[DateMention], list[str], str]:
    """Dates and times in `text`, and the text with them blanked out (for number reading)."""
    found: list[DateMention] = []
    times: list[str] = []
    for pattern, precision in _DATE_PATTERNS:
        for match in list(pattern.finditer(text)):
            groups = match.groupdict()
            year = int(groups["year"])
            forms: list[str] = []
            if precision == "day-ambiguous":
                a, b = int(groups["a"]), int(groups["b"])
                for month, day in ((a, b), (b, a)):
                    if _valid(year, month, day):
                        forms.append(f"{year:04d}-{month:02d}-{day:02d}")
            else:
                month_raw = groups["month"]
                month = int(month_raw) if month_raw.isdigit() else _MONTHS[month_raw.lower()]
                if precision == "day":
                    day = int(groups["day"])
                    if _valid(year, month, day):
                        forms.append(f"{year:04d}-{month:02d}-{day:02d}")
                elif 1 <= month <= 12:
                    forms.append(f"{year:04d}-{month:02d}")
            if not forms:
                continue  # "31/31/2025" is not a date; its numbers are read as numbers
            found.append(DateMention(text=match.group(0), forms=tuple(forms)))
            if groups.get("time"):
                times.append(groups["time"])
            text = _blank(text, match.start(), match.end())
    for match in list(_TIME.finditer(text)):
        hours, minutes = (int(x) for x in match.group("time").split(":"))
        if hours < 24 and minutes < 60:
            times.append(f"{hours:02d}:{minutes:02d}")
            text = _blank(text, match.start(), match.end())
    return found, times, text


def _valid(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


def find_numbers(text: str) -> list[NumberMention]:
    """Numbers that state a value, with their unit when one follows.

    Skipped: digits inside words and codes (`HbA1c`, `E11.9`, `4548-4`, `COVID-19`),
    ordinals and stages (`2nd`, `3b`), and list numbers at the start of a line.
    """
    found: list[NumberMention] = []
    text = _ORDINAL.sub(lambda m: " " * len(m.group(0)), text)
    text = _LOINC_LIKE.sub(lambda m: " " * len(m.group(0)), text)
    for pair in list(_BP_PAIR.finditer(text)):
        if not pair.group("unit"):
            continue
        for part in ("sys", "dia"):
            found.append(
                NumberMention(text=pair.group(0), value=Decimal(pair.group(part)), unit="mmhg")
            )
        text = _blank(text, pair.start(), pair.end())
    position = 0
    while True:
        match = _NUMBER.search(text, position)
        if match is None:
            break
        start, end = match.start(), match.end()
        position = end
        before = text[start - 1] if start > 0 else " "
        if before.isalnum() or before in "_.#^*":
            continue
        if before == "-" and start > 1 and text[start - 2].isalpha():
            continue  # "COVID-19", "T-2"
        after = text[end] if end < len(text) else " "
        if after == "." and end + 1 < len(text) and text[end + 1].isdigit():
            continue
        unit_match = _UNIT_AFTER.match(text, end)
        if after.isalpha() and unit_match is None:
            continue
        value = Decimal(match.group("num").replace(",", "") + (match.group("frac") or ""))
        unit = canonical_unit(unit_match.group("unit")) if unit_match else None
        if unit_match is not None:
            position = unit_match.end()
        found.append(NumberMention(text=text[start:position].strip(), value=value, unit=unit))
    return found


# -- what the cited resources hold ----------------------------------------------------------

_FHIR_DATETIME = re.compile(
    r"^(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<time>\d{2}:\d{2})(?::\d{2}(?:\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
#: Keys whose strings are machinery (codes, ids, URLs), not words a statement would quote.
_MACHINE_KEYS = {
    "id", "reference", "system", "url", "code", "status", "intent", "resourceType", "use",
    "fullUrl", "profile", "div", "version", "language", "gender", "unit", "comparator",
    "priority", "type", "criticality", "severity", "category", "mode",
}  # fmt: skip
_SKIP_KEYS = {"meta", "identifier", "telecom", "address", "photo", "name", "contact"}


@dataclass
class Evidence:
    """Numbers (with units), dates and words found in the cited resources."""

    numbers: list[tuple[Decimal, str | None]] = field(default_factory=list)
    dates: set[str] = field(default_factory=set)
    times: set[str] = field(default_factory=set)
    words: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " \n ".join(self.words).lower()

    def add_number(self, value: Any, unit: str | None = None) -> None:
        if isinstance(value, bool):
            return
        try:
            self.numbers.append((Decimal(str(value)), canonical_unit(unit)))
        except (InvalidOperation, ValueError):
            return

    def add_datetime(self, value: str) -> bool:
        match = _FHIR_DATETIME.match(value.strip())
        if not match:
            return False
        year, month, day = match.group("year"), match.group("month"), match.group("day")
        self.dates.add(year)
        if month:
            self.dates.add(f"{year}-{month}")
        if day:
            self.dates.add(f"{year}-{month}-{day}")
            if match.group("time"):
                self.times.add(match.group("time"))
                # A reader may give the date in UTC, or in the server's zone: accept both.
                try:
                    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError:
                    return True
                if moment.tzinfo is not None:
                    utc = moment.astimezone(UTC)
                    self.dates.update({f"{utc:%Y}", f"{utc:%Y-%m}", f"{utc:%Y-%m-%d}"})
                    self.times.add(f"{utc:%H:%M}")
        return True


def collect_evidence(resources: Iterable[Mapping[str, Any]], *, today: date) -> Evidence:
    evidence = Evidence()
    for resource in resources:
        _walk(resource, evidence, key="")
        if resource.get("resourceType") == "Patient":
            # "a 64-year-old": the age is the patient's, counted from birthDate.
            age = age_on(resource, today)
            if age is not None:
                for value in (age - 1, age, age + 1):
                    evidence.add_number(value, "a")
                    evidence.add_number(value, None)
    return evidence


def _walk(node: Any, evidence: Evidence, *, key: str) -> None:
    if isinstance(node, Mapping):
        if key == "text" and "div" in node:
            return  # the narrative: the structured values are the evidence
        if isinstance(node.get("value"), int | float) and not isinstance(node.get("value"), bool):
            evidence.add_number(node["value"], node.get("unit") or node.get("code"))
        for child_key, child in node.items():
            if child_key in _SKIP_KEYS or (child_key == "value" and not isinstance(child, str)):
                continue
            _walk(child, evidence, key=child_key)
    elif isinstance(node, list):
        for item in node:
            _walk(item, evidence, key=key)
    elif isinstance(node, bool):
        return
    elif isinstance(node, int | float):
        evidence.add_number(node)
    elif isinstance(node, str):
        if evidence.add_datetime(node) or key in _MACHINE_KEYS:
            return
        evidence.words.append(node)
        for mention in find_numbers(find_dates(node)[2]):
            evidence.add_number(mention.value, mention.unit)


# -- drug names -------------------------------------------------------------------------

_FORM_WORDS = {
    "oral", "tablet", "capsule", "solution", "injection", "injectable", "extended", "release",
    "delayed", "topical", "cream", "suspension", "patch", "inhaler", "spray", "pen", "vitamin",
}  # fmt: skip


def drug_vocabulary(snapshot: ChartSnapshot) -> frozenset[str]:
    """Drug names to look for in statements: the table's ingredients and the chart's drugs."""
    names = set(KNOWN_DRUG_NAMES)
    for rtype, key in (("MedicationRequest", "medicationCodeableConcept"), ("Medication", "code")):
        for resource in snapshot.of_type(rtype):
            concepts = [resource.get(key)]
            for contained in resource.get("contained") or []:
                if isinstance(contained, Mapping) and contained.get("resourceType") == "Medication":
                    concepts.append(contained.get("code"))
            for concept in concepts:
                if isinstance(concept, Mapping):
                    names.update(_drug_names(concept_text(concept)))
    return frozenset(n for n in names if len(n) >= 4)


def _drug_names(text: str) -> set[str]:
    names = {m.strip().lower() for m in re.findall(r"\[([^\]]+)\]", text)}  # brand: "[Lipitor]"
    words: list[str] = []
    for word in re.split(r"\s+", text.strip()):
        if not word or any(ch.isdigit() for ch in word) or word.lower() in _FORM_WORDS:
            break
        words.append(word.lower().strip(",;()"))
    if words:
        names.add(" ".join(words))
        names.add(words[0])
    return {n for n in names if n and not any(ch.isdigit() for ch in n)}


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![a-z]){re.escape(name)}(?![a-z])", text) is not None


# -- the verifier -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StatementCheck:
    ok: bool
    issues: tuple[str, ...]


class GroundingVerifier:
    """Checks statements against one snapshot (build one per snapshot; it caches evidence)."""

    def __init__(self, snapshot: ChartSnapshot, *, today: date | None = None) -> None:
        self.snapshot = snapshot
        self.today = today or as_of(snapshot)
        self._vocabulary: frozenset[str] | None = None
        self._evidence: dict[tuple[str, ...], Evidence] = {}

    @property
    def vocabulary(self) -> frozenset[str]:
        if self._vocabulary is None:
            self._vocabulary = drug_vocabulary(self.snapshot)
        return self._vocabulary

    def _cited(self, reference: str) -> list[Mapping[str, Any]]:
        """The cited resource and what it points at for its medication (the Medication)."""
        resource = self.snapshot.get(reference)
        if resource is None:
            return []
        found: list[Mapping[str, Any]] = [resource]
        med_ref = (resource.get("medicationReference") or {}).get("reference")
        if isinstance(med_ref, str) and not med_ref.startswith("#"):
            medication = self.snapshot.get(med_ref)
            if medication is not None:
                found.append(medication)
        return found

    def evidence(self, references: Sequence[str]) -> Evidence:
        key = tuple(sorted(reference_key(r) for r in references))
        if key not in self._evidence:
            resources = [r for ref in key for r in self._cited(ref)]
            self._evidence[key] = collect_evidence(resources, today=self.today)
        return self._evidence[key]

    def check(self, statement: Statement) -> StatementCheck:
        issues: list[str] = []
        references = [c.reference for c in statement.citations]
        present = [r for r in references if r in self.snapshot]
        if not references:
            issues.append("cites no chart resource")
        for reference in references:
            if reference not in self.snapshot:
                issues.append(f"cites {reference[:80]}, which is not in this chart")
        evidence = self.evidence(present)
        dates, times, rest = find_dates(statement.text)
        for mention in dates:
            if not any(form in evidence.dates for form in mention.forms):
                issues.append(f"date {mention.text!r} is not in the cited resources")
        for time in times:
            if time not in evidence.times:
                issues.append(f"time {time!r} is not in the cited resources")
        for number in find_numbers(rest):
            problem = _number_problem(number, evidence)
            if problem:
                issues.append(problem)
        lowered = statement.text.lower()
        cited_text = evidence.text
        for name in sorted(self.vocabulary):
            if _mentions(lowered, name) and not _mentions(cited_text, name):
                issues.append(f"drug {name!r} is not in the cited resources")
        return StatementCheck(ok=not issues, issues=tuple(dict.fromkeys(issues)))


def _number_problem(number: NumberMention, evidence: Evidence) -> str | None:
    same_value = [unit for value, unit in evidence.numbers if value == number.value]
    if not same_value:
        if number.unit is None and number.value == number.value.to_integral_value():
            year = int(number.value)
            if 1900 <= year <= 2100 and str(year) in evidence.dates:
                return None  # "in 2025": a year the cited resources carry
        return f"{number.text!r} is not in the cited resources"
    if number.unit is None or number.unit == "a":
        return None
    if any(unit is None or unit == number.unit for unit in same_value):
        return None
    cited = ", ".join(sorted({u for u in same_value if u}))
    return f"{number.text!r} has a different unit in the cited resources ({cited})"


def verify_suggestions(
    suggestions: Sequence[Suggestion],
    verifier: GroundingVerifier,
    *,
    unverified: str = "drop",
) -> list[Suggestion]:
    """Each suggestion with its statements checked and its Verification.

    A suggestion whose statements were all dropped comes back with none (and its counts):
    the caller counts it for the metrics and does not show it.
    """
    out: list[Suggestion] = []
    for suggestion in suggestions:
        kept: list[Statement] = []
        passed = dropped = shown = 0
        for statement in suggestion.statements:
            result = verifier.check(statement)
            if result.ok:
                passed += 1
                kept.append(_with(statement, verified=True, issues=()))
            elif unverified == "mark":
                shown += 1
                kept.append(_with(statement, verified=False, issues=result.issues))
            else:
                dropped += 1
        verification = Verification(
            checked=len(suggestion.statements), passed=passed, dropped=dropped,
            unverified_shown=shown,
        )  # fmt: skip
        out.append(suggestion.with_statements(tuple(kept), verification=verification))
    return out


def _with(statement: Statement, *, verified: bool, issues: tuple[str, ...]) -> Statement:
    return replace(statement, verified=verified, issues=issues)
