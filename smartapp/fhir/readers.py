"""Pure readers over FHIR R4 JSON (codes, dates, values, names) for the engines and the sidebar.

https://hl7.org/fhir/R4/datatypes.html

They take the server's JSON dicts as they are and never raise on missing or odd fields:
anything absent or malformed reads as None (or an empty list).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from typing import Any

from smartapp.fhir.snapshot import ChartSnapshot

LOINC = "http://loinc.org"

_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")

#: Where a resource's clinically relevant date lives, first match wins (Observation,
#: Condition, AllergyIntolerance, MedicationRequest, Immunization, Procedure,
#: DocumentReference, Encounter).
_DATE_PATHS: tuple[tuple[str, ...], ...] = (
    ("effectiveDateTime",),
    ("effectivePeriod", "start"),
    ("effectiveInstant",),
    ("issued",),
    ("onsetDateTime",),
    ("onsetPeriod", "start"),
    ("performedDateTime",),
    ("performedPeriod", "start"),
    ("recordedDate",),
    ("authoredOn",),
    ("occurrenceDateTime",),
    ("date",),
    ("period", "start"),
)


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def codings(cc: Any) -> list[Mapping[str, Any]]:
    """The `coding` entries of a CodeableConcept that are objects (none if it has none)."""
    raw = _dict(cc).get("coding")
    return [c for c in raw if isinstance(c, Mapping)] if isinstance(raw, list) else []


#: SNOMED CT's semantic tags, the "(disorder)" ending a fully specified name (SNOMED CT
#: Editorial Guide, "Semantic Tags"). Charts built from FSNs (Synthea's, some EHRs') show
#: "Essential hypertension (disorder)"; a note, and a patient, says "Essential hypertension".
_SEMANTIC_TAG = re.compile(
    r"\s+\((?:disorder|finding|substance|procedure|situation|observable entity|"
    r"morphologic abnormality|product|medicinal product|medicinal product form|"
    r"clinical drug|event|body structure|qualifier value|regime/therapy|physical object|"
    r"organism|record artifact|environment|social concept|specimen)\)$"
)


def without_semantic_tag(name: str) -> str:
    """`Peanut - dietary (substance)` → `Peanut - dietary`; other names unchanged."""
    return _SEMANTIC_TAG.sub("", name.strip())


def codeable_text(cc: Any) -> str | None:
    """What to show for a CodeableConcept: its text, else a coding's display, else a code
    (a SNOMED CT semantic tag left off the words)."""
    text = _str(_dict(cc).get("text"))
    if text:
        return without_semantic_tag(text) or text.strip()
    for coding in codings(cc):
        display = _str(coding.get("display"))
        if display:
            return without_semantic_tag(display) or display.strip()
    for coding in codings(cc):
        code = _str(coding.get("code"))
        if code:
            return code.strip()
    return None


def has_code(resource_or_cc: Any, system: str | None, code: str) -> bool:
    """True if a CodeableConcept (or a resource's `code`) has a coding with `system`|`code`.

    `system=None` matches the code in any system.
    """
    data = _dict(resource_or_cc)
    cc = data.get("code") if "resourceType" in data else data
    return any(
        c.get("code") == code and (system is None or c.get("system") == system) for c in codings(cc)
    )


def parse_fhir_date(value: Any) -> date | None:
    """The calendar date of a FHIR date/dateTime/instant, as written (no time-zone shift).

    A partial date reads as its first day (`2019` → 2019-01-01, `2019-04` → 2019-04-01).
    """
    if not isinstance(value, str):
        return None
    match = _DATE.match(value.strip())
    if not match:
        return None
    year, month, day = match.group(1), match.group(2) or "01", match.group(3) or "01"
    try:
        return date(int(year), int(month), int(day))
    except ValueError:
        return None


def effective_date(resource: Any) -> date | None:
    """When it happened: effective[x], issued, onset[x], performed[x], recorded, authored, date."""
    data = _dict(resource)
    for path in _DATE_PATHS:
        value: Any = data
        for key in path:
            value = _dict(value).get(key)
        parsed = parse_fhir_date(value)
        if parsed is not None:
            return parsed
    return None


def _number(value: Any) -> float | None:
    # bool is an int in Python; a JSON true is not a measurement.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _quantity(quantity: Any) -> tuple[float, str | None] | None:
    q = _dict(quantity)
    value = _number(q.get("value"))
    if value is None:
        return None
    return value, _str(q.get("unit")) or _str(q.get("code"))


def quantity_of(observation: Any) -> tuple[float, str | None] | None:
    """(value, unit) of an Observation's `valueQuantity` (unit falls back to the UCUM code)."""
    return _quantity(_dict(observation).get("valueQuantity"))


def _loinc_or_first_code(cc: Any) -> str | None:
    all_codings = codings(cc)
    for coding in all_codings:
        if coding.get("system") == LOINC and _str(coding.get("code")):
            return str(coding["code"])
    for coding in all_codings:
        if _str(coding.get("code")):
            return str(coding["code"])
    return None


def components_of(observation: Any) -> list[tuple[str, float, str | None]]:
    """(code, value, unit) of each component with a quantity (blood pressure: 8480-6, 8462-4).

    The code is the component's LOINC code when it has one, else its first code.
    Components without a code or a numeric value (dataAbsentReason) are left out.
    """
    out: list[tuple[str, float, str | None]] = []
    components = _dict(observation).get("component")
    for component in components if isinstance(components, list) else []:
        code = _loinc_or_first_code(_dict(component).get("code"))
        quantity = _quantity(_dict(component).get("valueQuantity"))
        if code and quantity:
            out.append((code, quantity[0], quantity[1]))
    return out


def _format_number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def value_text(observation: Any) -> str | None:
    """An Observation's value in words: `7.2 %`, `<5 mg/L`, `120/80 mm[Hg]`, `Positive`."""
    data = _dict(observation)
    q = _dict(data.get("valueQuantity"))
    quantity = _quantity(q)
    if quantity is not None:
        comparator = _str(q.get("comparator")) or ""
        unit = f" {quantity[1]}" if quantity[1] else ""
        return f"{comparator}{_format_number(quantity[0])}{unit}"
    concept = codeable_text(data.get("valueCodeableConcept"))
    if concept:
        return concept
    for key in ("valueString", "valueDateTime", "valueTime"):
        text = _str(data.get(key))
        if text:
            return text
    if isinstance(data.get("valueBoolean"), bool):
        return "yes" if data["valueBoolean"] else "no"
    parts = components_of(data)
    if parts:
        by_code = {code: (value, unit) for code, value, unit in parts}
        systolic, diastolic = by_code.get("8480-6"), by_code.get("8462-4")
        if systolic and diastolic:
            unit = f" {systolic[1]}" if systolic[1] else ""
            return f"{_format_number(systolic[0])}/{_format_number(diastolic[0])}{unit}"
        return ", ".join(
            f"{_format_number(value)}{f' {unit}' if unit else ''}" for _, value, unit in parts
        )
    return None


def medication_of(medication_request: Any, snapshot: ChartSnapshot) -> dict[str, Any] | None:
    """The Medication a MedicationRequest points at: contained (`#id`), relative or absolute.

    None when it names its drug with `medicationCodeableConcept`, or the reference does not
    resolve within the snapshot.
    """
    mr = _dict(medication_request)
    reference = _str(_dict(mr.get("medicationReference")).get("reference"))
    if reference is None:
        return None
    found = snapshot.resolve(reference, within=dict(mr))
    if found is None or found.get("resourceType") != "Medication":
        return None
    return found


def medication_name(medication_request: Any, snapshot: ChartSnapshot | None = None) -> str | None:
    """The drug's name: the CodeableConcept, else the referenced Medication, else the display."""
    mr = _dict(medication_request)
    name = codeable_text(mr.get("medicationCodeableConcept"))
    if name:
        return name
    if snapshot is not None:
        medication = medication_of(mr, snapshot)
        if medication is not None:
            name = codeable_text(medication.get("code"))
            if name:
                return name
    return _str(_dict(mr.get("medicationReference")).get("display"))


def _human_name_text(name: Mapping[str, Any]) -> str | None:
    text = _str(name.get("text"))
    if text:
        return text.strip()
    given = name.get("given")
    parts = [g.strip() for g in given if _str(g)] if isinstance(given, list) else []
    family = _str(name.get("family"))
    if family:
        parts.append(family.strip())
    return " ".join(parts) or None


def patient_name(patient: Any) -> str:
    """The patient's name for a banner: the `official` (or `usual`) name, else the first one."""
    names = _dict(patient).get("name")
    candidates = [n for n in names if isinstance(n, Mapping)] if isinstance(names, list) else []
    current = [n for n in candidates if not _dict(n.get("period")).get("end")] or candidates
    for use in ("official", "usual", None):
        for name in current:
            if use is None or name.get("use") == use:
                text = _human_name_text(name)
                if text:
                    return text
    return ""


def is_active_condition(condition: Any) -> bool:
    """True if a Condition is current: active/recurrence/relapse, not refuted or in error.

    Without a clinicalStatus it counts as active unless it has abated.
    """
    data = _dict(condition)
    verification = {c.get("code") for c in codings(data.get("verificationStatus"))}
    if verification & {"refuted", "entered-in-error"}:
        return False
    clinical = {c.get("code") for c in codings(data.get("clinicalStatus"))}
    if clinical:
        return bool(clinical & {"active", "recurrence", "relapse"})
    return not any(key.startswith("abatement") for key in data)
