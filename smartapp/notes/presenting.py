"""Compact summaries of the chart resources a suggestion cites, for the sidebar's source view.

https://hl7.org/fhir/R4/resourcelist.html

A citation opens in place: what it is, its value and unit, its date, its codes
(system|code display) and its status. Summaries are built only from the launch's cached
chart snapshot, never by asking the EHR again, and hold plain strings that the browser
sets as text. Document contents (attachments) are never included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from smartapp.fhir.readers import (
    codeable_text,
    codings,
    effective_date,
    medication_name,
    medication_of,
    patient_name,
    quantity_of,
    value_text,
)
from smartapp.fhir.snapshot import ChartSnapshot

#: A resource type name and a FHIR id (https://hl7.org/fhir/R4/datatypes.html#id).
RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
RESOURCE_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")

#: Longest string a summary carries: the sidebar shows a glance, not the whole record.
MAX_TEXT = 300
#: Most codes, components or details listed for one resource.
MAX_ITEMS = 12


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text: str = value.strip()
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _codes(*concepts: Any) -> list[dict[str, str | None]]:
    out: list[dict[str, str | None]] = []
    for cc in concepts:
        for coding in codings(cc):
            code = _text(coding.get("code"))
            if code is None:
                continue
            out.append(
                {
                    "system": _text(coding.get("system")),
                    "code": code,
                    "display": _text(coding.get("display")),
                }
            )
    return out[:MAX_ITEMS]


def _status_code(cc: Any) -> str | None:
    for coding in codings(cc):
        code = _text(coding.get("code"))
        if code:
            return code
    return codeable_text(cc)


def _concepts_text(items: Any) -> str | None:
    texts = [t for t in (codeable_text(cc) for cc in _list(items)) if t]
    return _text(", ".join(dict.fromkeys(texts))) if texts else None


def _period(period: Any) -> str | None:
    p = _dict(period)
    start, end = _text(p.get("start")), _text(p.get("end"))
    if start and end:
        return f"{start} – {end}"
    return start or (f"until {end}" if end else None)


class _Summary:
    """Collects the fields of one summary, dropping empty ones."""

    def __init__(self, resource: Mapping[str, Any]) -> None:
        rtype = str(resource.get("resourceType", ""))
        self.data: dict[str, Any] = {
            "reference": f"{rtype}/{resource.get('id', '')}",
            "resourceType": rtype,
            "title": None,
            "status": None,
            "date": None,
            "value": None,
            "unit": None,
            "valueText": None,
            "codes": [],
            "components": [],
            "details": [],
        }
        when = effective_date(resource)
        self.data["date"] = when.isoformat() if when else None

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def detail(self, label: str, value: Any) -> None:
        text = value if isinstance(value, str) else _text(value)
        if text and len(self.data["details"]) < MAX_ITEMS:
            self.data["details"].append({"label": label, "value": _text(text)})


def _observation(r: Mapping[str, Any], s: _Summary, _: ChartSnapshot) -> None:
    s.set("title", _text(codeable_text(r.get("code"))))
    s.set("status", _text(r.get("status")))
    s.set("codes", _codes(r.get("code")))
    quantity = quantity_of(r)
    if quantity is not None:
        s.set("value", quantity[0])
        s.set("unit", _text(quantity[1]))
    s.set("valueText", _text(value_text(r)))
    components = []
    for component in _list(r.get("component"))[:MAX_ITEMS]:
        c = _dict(component)
        q = _dict(c.get("valueQuantity"))
        value = q.get("value")
        components.append(
            {
                "name": _text(codeable_text(c.get("code"))),
                "value": value
                if isinstance(value, int | float) and not isinstance(value, bool)
                else None,
                "unit": _text(q.get("unit")) or _text(q.get("code")),
                "valueText": _text(value_text(c)),
            }
        )
    s.set("components", components)
    s.detail("Category", _concepts_text(r.get("category")))
    s.detail("Interpretation", _concepts_text(r.get("interpretation")))
    for rng in _list(r.get("referenceRange"))[:2]:
        rr = _dict(rng)
        low, high = _dict(rr.get("low")), _dict(rr.get("high"))
        text = _text(rr.get("text")) or " – ".join(
            t for t in (_text(low.get("value")), _text(high.get("value"))) if t
        )
        unit = _text(high.get("unit")) or _text(low.get("unit"))
        if text:
            s.detail("Reference range", f"{text} {unit}" if unit and not rr.get("text") else text)


def _condition(r: Mapping[str, Any], s: _Summary, _: ChartSnapshot) -> None:
    s.set("title", _text(codeable_text(r.get("code"))))
    clinical = _status_code(r.get("clinicalStatus"))
    verification = _status_code(r.get("verificationStatus"))
    s.set("status", _text(", ".join(t for t in (clinical, verification) if t)) or None)
    s.set("codes", _codes(r.get("code")))
    s.detail("Category", _concepts_text(r.get("category")))
    s.detail("Severity", codeable_text(r.get("severity")))
    onset = _text(r.get("onsetDateTime")) or _period(r.get("onsetPeriod"))
    if onset and not (s.data["date"] and onset.startswith(s.data["date"])):
        s.detail("Onset", onset)  # shown as the date already when it is the same day
    s.detail("Abated", _text(r.get("abatementDateTime")) or _period(r.get("abatementPeriod")))
    s.detail("Recorded", _text(r.get("recordedDate")))


def _medication_request(r: Mapping[str, Any], s: _Summary, snapshot: ChartSnapshot) -> None:
    s.set("title", _text(medication_name(r, snapshot)))
    s.set("status", _text(r.get("status")))
    medication = medication_of(r, snapshot)
    s.set(
        "codes",
        _codes(r.get("medicationCodeableConcept"), _dict(medication).get("code")),
    )
    s.detail("Intent", _text(r.get("intent")))
    for dosage in _list(r.get("dosageInstruction"))[:3]:
        s.detail("Dosage", _text(_dict(dosage).get("text")))
    s.detail("Ordered", _text(r.get("authoredOn")))
    s.detail("Prescriber", _text(_dict(r.get("requester")).get("display")))


def _medication(r: Mapping[str, Any], s: _Summary, _: ChartSnapshot) -> None:
    s.set("title", _text(codeable_text(r.get("code"))))
    s.set("status", _text(r.get("status")))
    s.set("codes", _codes(r.get("code")))
    s.detail("Form", codeable_text(r.get("form")))


def _allergy(r: Mapping[str, Any], s: _Summary, _: ChartSnapshot) -> None:
    s.set("title", _text(codeable_text(r.get("code"))))
    clinical = _status_code(r.get("clinicalStatus"))
    verification = _status_code(r.get("verificationStatus"))
    s.set("status", _text(", ".join(t for t in (clinical, verification) if t)) or None)
    s.set("codes", _codes(r.get("code")))
    s.detail("Criticality", _text(r.get("criticality")))
    categories = [c for c in _list(r.get("category")) if isinstance(c, str)]
    s.detail("Category", ", ".join(categories) or None)
    for reaction in _list(r.get("reaction"))[:3]:
        s.detail("Reaction", _concepts_text(_dict(reaction).get("manifestation")))


def _procedure(r: Mapping[str, Any], s: _Summary, _: ChartSnapshot) -> None:
    s.set("title", _text(codeable_text(r.get("code"))))
    s.set("status", _text(r.get("status")))
    s.set("codes", _codes(r.get("code")))
    s.detail("Performed", _text(r.get("performedDateTime")) or _period(r.get("performedPeriod")))


def _immunization(r: Mapping[str, Any], s: _Summary, _: ChartSnapshot) -> None:
    s.set("title", _text(codeable_text(r.get("vaccineCode"))))
    s.set("status", _text(r.get("status")))
    s.set("codes", _codes(r.get("vaccineCode")))
    s.detail("Given", _text(r.get("occurrenceDateTime")) or _text(r.get("occurrenceString")))
    s.detail("Lot", _text(r.get("lotNumber")))


def _document(r: Mapping[str, Any], s: _Summary, _: ChartSnapshot) -> None:
    # The title and dates only: the note's content is the EHR's to show, not a glance.
    s.set("title", _text(codeable_text(r.get("type"))) or _text(r.get("description")))
    s.set("status", _text(", ".join(t for t in (r.get("status"), r.get("docStatus")) if t)))
    s.set("codes", _codes(r.get("type")))
    s.detail("Category", _concepts_text(r.get("category")))
    s.detail("Description", _text(r.get("description")))


def _encounter(r: Mapping[str, Any], s: _Summary, _: ChartSnapshot) -> None:
    s.set("title", _concepts_text(r.get("type")) or _text(_dict(r.get("class")).get("display")))
    s.set("status", _text(r.get("status")))
    s.set("codes", _codes(*_list(r.get("type"))))
    s.detail(
        "Class",
        _text(_dict(r.get("class")).get("display")) or _text(_dict(r.get("class")).get("code")),
    )
    s.detail("Period", _period(r.get("period")))


def _patient(r: Mapping[str, Any], s: _Summary, _: ChartSnapshot) -> None:
    s.set("title", _text(patient_name(r)))
    s.set("date", None)
    s.detail("Born", _text(r.get("birthDate")))
    s.detail("Gender", _text(r.get("gender")))


_SUMMARIZERS: dict[str, Callable[[Mapping[str, Any], _Summary, ChartSnapshot], None]] = {
    "Observation": _observation,
    "Condition": _condition,
    "MedicationRequest": _medication_request,
    "Medication": _medication,
    "AllergyIntolerance": _allergy,
    "Procedure": _procedure,
    "Immunization": _immunization,
    "DocumentReference": _document,
    "Encounter": _encounter,
    "Patient": _patient,
}


def is_reference(resource_type: str, resource_id: str) -> bool:
    """True if `Type/id` is shaped like a FHIR reference (anything else is never looked up)."""
    return bool(RESOURCE_TYPE.fullmatch(resource_type) and RESOURCE_ID.fullmatch(resource_id))


def summarize(resource: Mapping[str, Any], snapshot: ChartSnapshot) -> dict[str, Any]:
    """The compact summary of one resource that the snapshot holds.

    Keys: reference, resourceType, title, status, date (YYYY-MM-DD), value (number),
    unit, valueText, codes [{system, code, display}], components [{name, value, unit,
    valueText}], details [{label, value}]. Missing values are null or empty lists.
    """
    summary = _Summary(resource)
    summarizer = _SUMMARIZERS.get(summary.data["resourceType"])
    if summarizer is not None:
        summarizer(resource, summary, snapshot)
    else:
        summary.set("status", _text(resource.get("status")))
        summary.set("title", _text(codeable_text(resource.get("code"))))
        summary.set("codes", _codes(resource.get("code")))
    return summary.data


def summary_for(
    snapshot: ChartSnapshot, resource_type: str, resource_id: str
) -> dict[str, Any] | None:
    """The summary of `Type/id` if the snapshot holds it; None otherwise (never fetched)."""
    if not is_reference(resource_type, resource_id):
        return None
    resource = snapshot.get(f"{resource_type}/{resource_id}")
    if resource is None or resource.get("resourceType") != resource_type:
        return None
    return summarize(resource, snapshot)
