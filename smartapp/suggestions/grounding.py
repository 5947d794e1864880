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
from smartapp.suggestions import units
from smartapp.suggestions.facts import (
    active_allergy,
    age_on,
    as_of,
    concept_text,
    no_known_allergy,
    ref,
)
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
    raw_unit: str | None = None  # as written, for the UCUM parser


def _blank(text: str, start: int, end: int) -> str:
    return text[:start] + " " * (end - start) + text[end:]


#: Every date, time and number pattern needs a digit: text without one holds none of them
#: (most of a chart's strings: codes' displays, statuses, names).
_ANY_DIGIT = re.compile(r"\d")


#: Every date and time pattern at once, without its groups and ignoring case (so it matches
#: wherever one of them would): most strings with a digit hold no date, and one search says
#: so where eight would. Nothing is blanked until a pattern matches, so a string it does not
#: match is one no pattern matches.
_ANY_DATE_OR_TIME = re.compile(
    "|".join(
        re.sub(r"\(\?P<\w+>", "(?:", pattern.pattern)
        for pattern in (*(p for p, _ in _DATE_PATTERNS), _TIME)
    ),
    re.IGNORECASE,
)


def find_dates(text: str) -> tuple[list[DateMention], list[str], str]:
    """Dates and times in `text`, and the text with them blanked out (for number reading)."""
    found: list[DateMention] = []
    times: list[str] = []
    if _ANY_DIGIT.search(text) is None or _ANY_DATE_OR_TIME.search(text) is None:
        return found, times, text
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
    if _ANY_DIGIT.search(text) is None:
        return found
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
        ucum_code, ucum_end = _ucum_after(text, end)
        if after.isalpha() and unit_match is None and ucum_code is None:
            continue
        value = Decimal(match.group("num").replace(",", "") + (match.group("frac") or ""))
        unit = canonical_unit(unit_match.group("unit")) if unit_match else None
        raw = unit_match.group("unit") if unit_match else None
        if unit_match is not None:
            position = unit_match.end()
        if ucum_code is not None and ucum_end > position:
            # "0.42 mg/mg": the whole UCUM code, not the "mg" at its start.
            unit, raw, position = canonical_unit(ucum_code), ucum_code, ucum_end
        found.append(
            NumberMention(text=text[start:position].strip(), value=value, unit=unit, raw_unit=raw)
        )
    return found


def _ucum_after(text: str, end: int) -> tuple[str | None, int]:
    """A UCUM code right after a number (`mg/mg`, `10*3/uL`, `[lb_av]`) and where it ends."""
    match = units.UCUM_TOKEN.match(text, end)
    if match is None:
        return None, end
    code = match.group("unit")
    stop = match.end()
    while code and code[-1] in ".,;:)'-":
        code, stop = code[:-1], stop - 1
    if code and units.parse(code) is not None:
        return code, stop
    return None, end


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


#: Keys whose strings are free text (what someone typed), not structured data: words and
#: numbers found only there show that "the chart says so", never that it is so.
_FREE_TEXT_KEYS = {"note", "patientInstruction", "comment", "description", "div"}
#: CodeableConcept-valued keys: their `text` labels a coded element (structured).
_CONCEPT_KEYS = {
    "code", "medicationCodeableConcept", "valueCodeableConcept", "substance", "manifestation",
    "clinicalStatus", "verificationStatus", "category", "interpretation", "vaccineCode",
    "reasonCode", "bodySite", "route", "method", "form", "ingredient", "itemCodeableConcept",
    "statusReason", "severity", "type",
}  # fmt: skip

#: A value with more significant digits than this, or this large, is not a measurement.
MAX_DIGITS = 12
MAX_MAGNITUDE = Decimal("1e9")


def implausible(value: Decimal) -> bool:
    """NaN, infinities, 309-digit creatinines: never shown as a fact."""
    if not value.is_finite():
        return True
    return abs(value) >= MAX_MAGNITUDE or len(value.as_tuple().digits) > MAX_DIGITS


@dataclass
class _Facts:
    numbers: list[tuple[Decimal, str | None, str | None]] = field(default_factory=list)
    dates: set[str] = field(default_factory=set)
    times: set[str] = field(default_factory=set)
    words: list[str] = field(default_factory=list)


@dataclass
class Evidence:
    """Numbers (with units), dates and words found in the cited resources.

    `structured` holds what coded and typed elements carry (values, units, dates, codings
    and concept labels); `free` what only free text carries (dosage instructions, notes,
    narrative, reference display strings).
    """

    structured: _Facts = field(default_factory=_Facts)
    free: _Facts = field(default_factory=_Facts)

    @property
    def numbers(self) -> list[tuple[Decimal, str | None, str | None]]:
        return self.structured.numbers

    @property
    def dates(self) -> set[str]:
        return self.structured.dates

    @property
    def times(self) -> set[str]:
        return self.structured.times

    @property
    def words(self) -> list[str]:
        return self.structured.words

    @property
    def text(self) -> str:
        return " \n ".join(self.structured.words).lower()

    @property
    def free_text(self) -> str:
        return " \n ".join(self.free.words).lower()

    def extend(self, other: Evidence) -> None:
        """Add what `other` holds after what this holds (as if walked after it)."""
        for mine, theirs in ((self.structured, other.structured), (self.free, other.free)):
            mine.numbers.extend(theirs.numbers)
            mine.dates.update(theirs.dates)
            mine.times.update(theirs.times)
            mine.words.extend(theirs.words)

    def add_number(self, value: Any, unit: str | None = None, *, free: bool = False) -> None:
        if isinstance(value, bool):
            return
        try:
            number = Decimal(str(value))
        except (InvalidOperation, ValueError):
            return
        if implausible(number):
            return  # never evidence: a statement repeating it is not verified
        target = self.free if free else self.structured
        target.numbers.append((number, canonical_unit(unit), unit))

    def add_datetime(self, value: str, *, free: bool = False) -> bool:
        match = _FHIR_DATETIME.match(value.strip())
        if not match:
            return False
        target = self.free if free else self.structured
        year, month, day = match.group("year"), match.group("month"), match.group("day")
        target.dates.add(year)
        if month:
            target.dates.add(f"{year}-{month}")
        if day:
            target.dates.add(f"{year}-{month}-{day}")
            if match.group("time"):
                target.times.add(match.group("time"))
                # A reader may give the date in UTC, or in the server's zone: accept both.
                try:
                    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError:
                    return True
                if moment.tzinfo is not None:
                    utc = moment.astimezone(UTC)
                    target.dates.update({f"{utc:%Y}", f"{utc:%Y-%m}", f"{utc:%Y-%m-%d}"})
                    target.times.add(f"{utc:%H:%M}")
        return True


def collect_evidence(resources: Iterable[Mapping[str, Any]], *, today: date) -> Evidence:
    evidence = Evidence()
    for resource in resources:
        _walk(resource, evidence, key="", free=False, depth=0)
        if resource.get("resourceType") == "Patient":
            # "a 64-year-old": the age is the patient's, counted from birthDate.
            age = age_on(resource, today)
            if age is not None:
                for value in (age - 1, age, age + 1):
                    evidence.add_number(value, "a")
                    evidence.add_number(value, None)
    return evidence


_MAX_DEPTH = 40  # deeper nesting is hostile input, not evidence


def _walk(node: Any, evidence: Evidence, *, key: str, free: bool, depth: int) -> None:
    if depth > _MAX_DEPTH:
        return
    if isinstance(node, Mapping):
        if key == "text" and "div" in node:
            return  # the narrative: the structured values are the evidence
        if isinstance(node.get("value"), int | float) and not isinstance(node.get("value"), bool):
            # The display unit and the UCUM code: a statement may give either.
            spellings: list[str | None] = [
                u for u in (node.get("unit"), node.get("code")) if isinstance(u, str)
            ]
            for unit in dict.fromkeys(spellings or [None]):
                evidence.add_number(node["value"], unit, free=free)
        is_reference = isinstance(node.get("reference"), str)
        is_concept = "coding" in node or key in _CONCEPT_KEYS
        for child_key, child in node.items():
            if child_key in _SKIP_KEYS or (child_key == "value" and not isinstance(child, str)):
                continue
            child_free = (
                free
                or child_key in _FREE_TEXT_KEYS
                or (child_key == "text" and not is_concept)
                or (child_key == "display" and is_reference)
            )
            _walk(child, evidence, key=child_key, free=child_free, depth=depth + 1)
    elif isinstance(node, list):
        for item in node:
            _walk(item, evidence, key=key, free=free, depth=depth + 1)
    elif isinstance(node, bool):
        return
    elif isinstance(node, int | float):
        evidence.add_number(node, free=free)
    elif isinstance(node, str):
        if evidence.add_datetime(node, free=free) or key in _MACHINE_KEYS:
            return
        target = evidence.free if free else evidence.structured
        target.words.append(node)
        dates, _times, rest = find_dates(node)
        if free:
            for date_mention in dates:
                target.dates.update(date_mention.forms)
        for number in find_numbers(rest):
            evidence.add_number(number.value, number.raw_unit or number.unit, free=free)


# -- drug names -------------------------------------------------------------------------

_FORM_WORDS = {
    "oral", "tablet", "capsule", "solution", "injection", "injectable", "extended", "release",
    "delayed", "topical", "cream", "suspension", "patch", "inhaler", "spray", "pen", "vitamin",
}  # fmt: skip


def drug_vocabulary(snapshot: ChartSnapshot) -> frozenset[str]:
    """Drug names to look for in statements: the table's ingredients and the chart's drugs."""
    names = set(KNOWN_DRUG_NAMES)
    for rtype, key in (
        ("MedicationRequest", "medicationCodeableConcept"),
        ("MedicationStatement", "medicationCodeableConcept"),
        ("Medication", "code"),
    ):
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
    # The substring test first: a statement names few of the hundreds of drugs looked for.
    return name in text and re.search(rf"(?<![a-z]){re.escape(name)}(?![a-z])", text) is not None


# -- the verifier -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StatementCheck:
    ok: bool
    issues: tuple[str, ...]


class GroundingVerifier:
    """Checks statements against one snapshot (build one per snapshot; it caches evidence)."""

    @classmethod
    def of(cls, snapshot: ChartSnapshot) -> GroundingVerifier:
        """The snapshot's verifier as of its own day, shared by everything that checks
        statements against it (the kinds, what changed, the LLM's titles), so that each
        cited resource is read once per snapshot."""
        return snapshot.derived("grounding_verifier", lambda: cls(snapshot))

    def __init__(self, snapshot: ChartSnapshot, *, today: date | None = None) -> None:
        self.snapshot = snapshot
        self.today = today or as_of(snapshot)
        self._vocabulary: frozenset[str] | None = None
        self._evidence: dict[tuple[str, ...], Evidence] = {}
        self._by_resource: dict[int, tuple[Mapping[str, Any], Evidence]] = {}

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

    def _check_ages(self, text: str, evidence: Evidence, issues: list[str]) -> str:
        """ "(14 months old)" holds when a cited date is that many whole months before the
        day the chart was read; the phrase is then blanked so its number is not a value."""
        for match in list(_AGE.finditer(text)):
            months = int(match.group("n"))
            if not any(_months_between(day, self.today) == months for day in evidence.dates):
                issues.append(f"{match.group(0)!r} does not match a cited date")
            text = _blank(text, match.start(), match.end())
        return text

    def evidence(self, references: Sequence[str]) -> Evidence:
        key = tuple(sorted(reference_key(r) for r in references))
        if key not in self._evidence:
            resources = [r for ref in key for r in self._cited(ref)]
            if len(resources) == 1:
                self._evidence[key] = self._of_resource(resources[0])
            else:
                # What collect_evidence(resources) gives, from each resource's own, read
                # once per snapshot: statements cite the same resources in many sets.
                merged = Evidence()
                for resource in resources:
                    merged.extend(self._of_resource(resource))
                self._evidence[key] = merged
        return self._evidence[key]

    def _of_resource(self, resource: Mapping[str, Any]) -> Evidence:
        # By identity: the snapshot holds the resource (kept here too) as long as this lives.
        found = self._by_resource.get(id(resource))
        if found is None:
            found = (resource, collect_evidence([resource], today=self.today))
            self._by_resource[id(resource)] = found
        return found[1]

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
        # Quoted passages are the chart's words: each must be in a cited resource (free
        # text or structured), and what they hold is then not checked as a finding.
        text = statement.text
        cited_text = evidence.text
        free_text = evidence.free_text
        for quote in _QUOTED.finditer(text):
            words = _squash(quote.group("q"))
            if words and words not in _squash(free_text + " \n " + cited_text):
                issues.append(f"quoted {quote.group(0)[:60]!r} is not the cited resources' words")
            text = _blank(text, quote.start(), quote.end())
        text = self._check_ages(text, evidence, issues)
        dates, times, rest = find_dates(text)
        for mention in dates:
            if not any(form in evidence.dates for form in mention.forms):
                if any(form in evidence.free.dates for form in mention.forms):
                    issues.append(f"date {mention.text!r} is only in free text; quote it")
                else:
                    issues.append(f"date {mention.text!r} is not in the cited resources")
        for time in times:
            if time not in evidence.times:
                issues.append(f"time {time!r} is not in the cited resources")
        for number in find_numbers(rest):
            problem = _number_problem(number, evidence)
            if problem:
                issues.append(problem)
        lowered = text.lower()
        offered = {name.lower() for name in statement.proposes} if statement.rule else set()
        for name in sorted(self.vocabulary - offered):
            if _mentions(lowered, name) and not _mentions(cited_text, name):
                if _mentions(free_text, name):
                    issues.append(f"drug {name!r} is only in free text of the cited resources")
                else:
                    issues.append(f"drug {name!r} is not in the cited resources")
        issues.extend(contradictions(statement.text, self.snapshot, self.vocabulary))
        return StatementCheck(ok=not issues, issues=tuple(dict.fromkeys(issues)))


_AGE = re.compile(r"\((?P<n>\d{1,3}) months? old\)")


def _months_between(day: str, today: date) -> int | None:
    try:
        earlier = date.fromisoformat(day[:10])
    except ValueError:
        return None
    months = (today.year - earlier.year) * 12 + today.month - earlier.month
    return months - 1 if today.day < earlier.day else months


_QUOTED = re.compile('["\u201c](?P<q>[^"\u201d]{1,600})["\u201d]')


def _squash(text: str | None) -> str:
    return re.sub(r"\s+", " ", (text or "").lower()).strip()


def _number_problem(number: NumberMention, evidence: Evidence) -> str | None:
    if implausible(number.value):
        return f"{number.text[:24]!r} is not a plausible value"
    problem = _match_number(number, evidence.structured.numbers, evidence.dates)
    if problem and _match_number(number, evidence.free.numbers, evidence.free.dates) is None:
        return f"{number.text!r} is only in free text of the cited resources; quote it"
    return problem


def _match_number(
    number: NumberMention,
    numbers: Sequence[tuple[Decimal, str | None, str | None]],
    dates: set[str],
) -> str | None:
    same_value = [(unit, raw) for value, unit, raw in numbers if value == number.value]
    if not same_value:
        if number.unit is None and number.value == number.value.to_integral_value():
            year = int(number.value)
            if 1900 <= year <= 2100 and str(year) in dates:
                return None  # "in 2025": a year the cited resources carry
        return f"{number.text!r} is not in the cited resources"
    if number.unit is None or number.unit == "a":
        return None
    for unit, raw in same_value:
        if unit is None or unit == number.unit:
            return None
        if units.same_unit(raw, number.raw_unit):
            return None
    cited = ", ".join(sorted({u for u, _ in same_value if u}))
    return f"{number.text!r} has a different unit in the cited resources ({cited})"


# -- statements that contradict the chart ---------------------------------------------------

_ALLERGY_DENIAL = re.compile(
    r"\b(?:ruled\s+out|no\s+(?:known\s+)?(?:drug\s+)?allerg\w*|nkda|not\s+allergic|"
    r"(?:is|are)\s+not\s+an?\s+allerg\w*|allergy\s+(?:was\s+|has\s+been\s+)?"
    r"(?:excluded|resolved|removed|disproved)|safe\s+to\s+(?:prescribe|give|use|take|administer)|"
    r"can\s+(?:safely\s+)?(?:be\s+)?(?:prescribed|given|taken))\b",
    re.IGNORECASE,
)
_STOPPED = re.compile(
    r"\b(?:stopped|discontinued|ceased|no\s+longer\s+(?:taking|takes|on|prescribed)|"
    r"was\s+taken\s+off|came\s+off)\b",
    re.IGNORECASE,
)
_ONGOING = re.compile(
    r"\b(?:currently\s+(?:taking|takes|on)|still\s+(?:taking|takes|on)|continues\s+(?:on|to\s+take)|"
    r"remains\s+on|is\s+active)\b",
    re.IGNORECASE,
)
_ACTIVE_ORDER = {"active", "on-hold", "intended"}  # intended: a MedicationStatement's
_ENDED_ORDER = {"stopped", "completed", "cancelled", "entered-in-error", "not-taken"}


def contradictions(
    text: str, snapshot: ChartSnapshot, vocabulary: frozenset[str] = frozenset()
) -> list[str]:
    """What in `text` the chart's structured data says is false (whatever the statement cites).

    An allergy "ruled out", "no allergies" or "safe to prescribe" while an active
    AllergyIntolerance is recorded; a drug "stopped" whose order is active, or "currently
    taking" a drug whose every order has ended.
    """
    found: list[str] = []
    lowered = text.lower()
    if _ALLERGY_DENIAL.search(text):
        for allergy in snapshot.of_type("AllergyIntolerance"):
            if not active_allergy(allergy) or no_known_allergy(allergy):
                continue
            substance = concept_text(allergy.get("code")).lower()
            if re.search(r"\bno known\b|\bnkda?\b|\bnone known\b", substance):
                continue  # "NKDA" recorded as an allergy is the absence of one
            names = {w for w in re.findall(r"[a-z]{4,}", substance)}
            if (
                "allerg" in lowered
                or any(_mentions(lowered, n) for n in names)
                or ("safe" in lowered)
            ):
                found.append(
                    f"contradicts the chart: an active allergy is recorded "
                    f"({ref(allergy)}, {substance[:60] or 'substance not named'})"
                )
    # A drug and a verb about it are read within one clause ("Simvastatin stopped
    # (switched to atorvastatin)" says nothing about atorvastatin being stopped).
    for clause in re.split(r"[();:.\n]|,\s*(?:and|but|then)\b|\bswitched\b|\bchanged\b", lowered):
        stopped = _STOPPED.search(clause) is not None
        ongoing = _ONGOING.search(clause) is not None
        if not (stopped or ongoing):
            continue
        for name in sorted(vocabulary):
            if not _mentions(clause, name):
                continue
            statuses = _order_statuses(snapshot, name)
            if stopped and statuses & _ACTIVE_ORDER:
                found.append(f"contradicts the chart: {name!r} has an active order")
            elif ongoing and statuses and statuses <= _ENDED_ORDER:
                found.append(f"contradicts the chart: every order for {name!r} has ended")
    return found


def _order_statuses(snapshot: ChartSnapshot, name: str) -> set[str]:
    statuses: set[str] = set()
    # A MedicationStatement's status (active, stopped, completed...) reads the same way.
    for order in (*snapshot.of_type("MedicationRequest"), *snapshot.of_type("MedicationStatement")):
        concept = order.get("medicationCodeableConcept")
        label = concept_text(concept) if isinstance(concept, Mapping) else ""
        med_ref = (order.get("medicationReference") or {}).get("reference")
        if isinstance(med_ref, str):
            medication = snapshot.get(med_ref)
            if medication is not None:
                label += " " + concept_text(medication.get("code"))
        if _mentions(label.lower(), name) and isinstance(order.get("status"), str):
            statuses.add(order["status"])
    return statuses


#: `Suggestion.extra` key: the statements the verifier dropped, with their issues.
DROPPED = "dropped_statements"


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
        lost: list[Statement] = []
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
                lost.append(_with(statement, verified=False, issues=result.issues))
        verification = Verification(
            checked=len(suggestion.statements), passed=passed, dropped=dropped,
            unverified_shown=shown,
        )  # fmt: skip
        extra = dict(suggestion.extra)
        if lost:
            extra[DROPPED] = tuple(lost)  # for `smartapp draft` and evaluate --out: never shown
        out.append(suggestion.with_statements(tuple(kept), verification=verification, extra=extra))
    return out


def _with(statement: Statement, *, verified: bool, issues: tuple[str, ...]) -> Statement:
    return replace(statement, verified=verified, issues=issues)
