"""FHIR search parameters the sandbox understands, and how a resource matches them.

https://hl7.org/fhir/R4/search.html — token, reference, date and string parameters with
comma-separated OR values; repeated parameters AND together.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

Resource = dict[str, Any]


class SearchError(ValueError):
    """A search value the server cannot interpret (a 400 with an OperationOutcome)."""


@dataclass(frozen=True)
class Param:
    kind: str  # token | reference | date | string
    extract: Callable[[Resource], Iterable[Any]]
    #: For reference parameters, the resource type a bare id refers to.
    target: str | None = None


# -- extraction helpers ---------------------------------------------------------------
def _get(resource: Any, path: str) -> list[Any]:
    """Values at a dotted path, flattening lists along the way."""
    values = [resource]
    for part in path.split("."):
        nxt: list[Any] = []
        for value in values:
            if isinstance(value, dict) and part in value:
                item = value[part]
                nxt.extend(item if isinstance(item, list) else [item])
        values = nxt
    return values


def _codes(*paths: str) -> Callable[[Resource], Iterator[tuple[str | None, str]]]:
    """Tokens from CodeableConcepts, Codings, Identifiers or plain codes."""

    def extract(resource: Resource) -> Iterator[tuple[str | None, str]]:
        for path in paths:
            for value in _get(resource, path):
                if isinstance(value, str):
                    yield None, value
                elif isinstance(value, dict):
                    if "coding" in value:
                        for coding in value.get("coding") or []:
                            if isinstance(coding, dict) and coding.get("code"):
                                yield coding.get("system"), str(coding["code"])
                    elif "code" in value:
                        yield value.get("system"), str(value["code"])
                    elif "value" in value:  # Identifier
                        yield value.get("system"), str(value["value"])
                elif isinstance(value, bool):
                    yield None, "true" if value else "false"

    return extract


def _refs(*paths: str) -> Callable[[Resource], Iterator[str]]:
    def extract(resource: Resource) -> Iterator[str]:
        for path in paths:
            for value in _get(resource, path):
                if isinstance(value, dict) and isinstance(value.get("reference"), str):
                    yield value["reference"]

    return extract


def _dates(*paths: str) -> Callable[[Resource], Iterator[str]]:
    def extract(resource: Resource) -> Iterator[str]:
        for path in paths:
            for value in _get(resource, path):
                if isinstance(value, str):
                    yield value

    return extract


def _strings(*paths: str) -> Callable[[Resource], Iterator[str]]:
    def extract(resource: Resource) -> Iterator[str]:
        for path in paths:
            for value in _get(resource, path):
                if isinstance(value, str):
                    yield value

    return extract


def _own_id(resource: Resource) -> Iterator[tuple[str | None, str]]:
    if isinstance(resource.get("id"), str):
        yield None, resource["id"]


_COMMON: dict[str, Param] = {
    "_id": Param("token", _own_id),
    "_lastUpdated": Param("date", _dates("meta.lastUpdated")),
    "_tag": Param("token", _codes("meta.tag")),
}

_CLINICAL_DATE = (
    "effectiveDateTime",
    "effectivePeriod.start",
    "effectiveInstant",
    "issued",
    "period.start",
    "onsetDateTime",
    "onsetPeriod.start",
    "recordedDate",
    "authoredOn",
    "occurrenceDateTime",
    "performedDateTime",
    "performedPeriod.start",
    "date",
    "context.period.start",
    "recorded",
)

SEARCH_PARAMS: dict[str, dict[str, Param]] = {
    "Patient": {
        "identifier": Param("token", _codes("identifier")),
        "name": Param("string", _strings("name.family", "name.given", "name.text")),
        "family": Param("string", _strings("name.family")),
        "given": Param("string", _strings("name.given")),
        "birthdate": Param("date", _dates("birthDate")),
        "gender": Param("token", _codes("gender")),
        "general-practitioner": Param("reference", _refs("generalPractitioner"), "Practitioner"),
    },
    "Practitioner": {
        "identifier": Param("token", _codes("identifier")),
        "name": Param("string", _strings("name.family", "name.given", "name.text")),
    },
    "Encounter": {
        "patient": Param("reference", _refs("subject"), "Patient"),
        "subject": Param("reference", _refs("subject"), "Patient"),
        "status": Param("token", _codes("status")),
        "class": Param("token", _codes("class")),
        "date": Param("date", _dates("period.start")),
        "participant": Param("reference", _refs("participant.individual"), "Practitioner"),
    },
    "Condition": {
        "patient": Param("reference", _refs("subject"), "Patient"),
        "subject": Param("reference", _refs("subject"), "Patient"),
        "category": Param("token", _codes("category")),
        "clinical-status": Param("token", _codes("clinicalStatus")),
        "verification-status": Param("token", _codes("verificationStatus")),
        "code": Param("token", _codes("code")),
        "encounter": Param("reference", _refs("encounter"), "Encounter"),
        "onset-date": Param("date", _dates("onsetDateTime", "onsetPeriod.start")),
        "recorded-date": Param("date", _dates("recordedDate")),
    },
    "Observation": {
        "patient": Param("reference", _refs("subject"), "Patient"),
        "subject": Param("reference", _refs("subject"), "Patient"),
        "category": Param("token", _codes("category")),
        "code": Param("token", _codes("code")),
        "status": Param("token", _codes("status")),
        "date": Param(
            "date", _dates("effectiveDateTime", "effectivePeriod.start", "effectiveInstant")
        ),
        "encounter": Param("reference", _refs("encounter"), "Encounter"),
        "performer": Param("reference", _refs("performer"), "Practitioner"),
    },
    "DiagnosticReport": {
        "patient": Param("reference", _refs("subject"), "Patient"),
        "subject": Param("reference", _refs("subject"), "Patient"),
        "category": Param("token", _codes("category")),
        "code": Param("token", _codes("code")),
        "status": Param("token", _codes("status")),
        "date": Param("date", _dates("effectiveDateTime", "effectivePeriod.start")),
        "result": Param("reference", _refs("result"), "Observation"),
        "encounter": Param("reference", _refs("encounter"), "Encounter"),
    },
    "MedicationRequest": {
        "patient": Param("reference", _refs("subject"), "Patient"),
        "subject": Param("reference", _refs("subject"), "Patient"),
        "status": Param("token", _codes("status")),
        "intent": Param("token", _codes("intent")),
        "code": Param("token", _codes("medicationCodeableConcept")),
        "medication": Param("reference", _refs("medicationReference"), "Medication"),
        "authoredon": Param("date", _dates("authoredOn")),
        "encounter": Param("reference", _refs("encounter"), "Encounter"),
        "requester": Param("reference", _refs("requester"), "Practitioner"),
    },
    "Medication": {
        "code": Param("token", _codes("code")),
    },
    "AllergyIntolerance": {
        "patient": Param("reference", _refs("patient"), "Patient"),
        "clinical-status": Param("token", _codes("clinicalStatus")),
        "verification-status": Param("token", _codes("verificationStatus")),
        "code": Param("token", _codes("code")),
        "category": Param("token", _codes("category")),
    },
    "Procedure": {
        "patient": Param("reference", _refs("subject"), "Patient"),
        "subject": Param("reference", _refs("subject"), "Patient"),
        "status": Param("token", _codes("status")),
        "code": Param("token", _codes("code")),
        "date": Param("date", _dates("performedDateTime", "performedPeriod.start")),
        "encounter": Param("reference", _refs("encounter"), "Encounter"),
    },
    "Immunization": {
        "patient": Param("reference", _refs("patient"), "Patient"),
        "status": Param("token", _codes("status")),
        "vaccine-code": Param("token", _codes("vaccineCode")),
        "date": Param("date", _dates("occurrenceDateTime")),
    },
    "DocumentReference": {
        "patient": Param("reference", _refs("subject"), "Patient"),
        "subject": Param("reference", _refs("subject"), "Patient"),
        "identifier": Param("token", _codes("identifier", "masterIdentifier")),
        "status": Param("token", _codes("status")),
        "category": Param("token", _codes("category")),
        "type": Param("token", _codes("type")),
        "date": Param("date", _dates("date")),
        "period": Param("date", _dates("context.period.start")),
        "encounter": Param("reference", _refs("context.encounter"), "Encounter"),
        "author": Param("reference", _refs("author"), "Practitioner"),
    },
    "Provenance": {
        "target": Param("reference", _refs("target"), None),
        "patient": Param("reference", _refs("target"), "Patient"),
        "agent": Param("reference", _refs("agent.who"), "Practitioner"),
        "recorded": Param("date", _dates("recorded")),
    },
    "Device": {
        "identifier": Param("token", _codes("identifier")),
        "patient": Param("reference", _refs("patient"), "Patient"),
    },
    "Organization": {
        "identifier": Param("token", _codes("identifier")),
        "name": Param("string", _strings("name")),
    },
}

#: The date parameter `_sort=date` uses, per type.
SORT_DATE: dict[str, Callable[[Resource], Iterable[str]]] = {
    rtype: params["date"].extract for rtype, params in SEARCH_PARAMS.items() if "date" in params
}
SORT_DATE.update(
    {
        "Condition": _dates("onsetDateTime", "recordedDate"),
        "MedicationRequest": _dates("authoredOn"),
        "AllergyIntolerance": _dates("recordedDate"),
        "Provenance": _dates("recorded"),
        "Patient": _dates("birthDate"),
    }
)

#: Where each type points at its patient (the Patient compartment, R4).
PATIENT_REFERENCE_PATHS: dict[str, tuple[str, ...]] = {
    "Encounter": ("subject",),
    "Condition": ("subject",),
    "Observation": ("subject",),
    "DiagnosticReport": ("subject",),
    "MedicationRequest": ("subject",),
    "MedicationStatement": ("subject",),
    "AllergyIntolerance": ("patient",),
    "Procedure": ("subject",),
    "Immunization": ("patient",),
    "DocumentReference": ("subject",),
    "Provenance": ("target",),
    "Device": ("patient",),
}


def params_for(resource_type: str) -> dict[str, Param]:
    return {**_COMMON, **SEARCH_PARAMS.get(resource_type, {})}


# -- references -------------------------------------------------------------------------
def normalize_reference(reference: str, base_url: str) -> str:
    """`Type/id` for a relative or same-server absolute reference (history stripped)."""
    ref = reference
    prefix = base_url.rstrip("/") + "/"
    if ref.startswith(prefix):
        ref = ref[len(prefix) :]
    parts = ref.split("/")
    if len(parts) >= 4 and parts[2] == "_history":
        ref = "/".join(parts[:2])
    return ref


def _reference_matches(
    value: str, references: Iterable[str], target: str | None, base_url: str
) -> bool:
    wanted = normalize_reference(value, base_url)
    if "/" not in wanted:
        if target is None:
            wanted_id = wanted
            return any(
                normalize_reference(r, base_url).split("/")[-1] == wanted_id for r in references
            )
        wanted = f"{target}/{wanted}"
    return any(normalize_reference(r, base_url) == wanted for r in references)


# -- tokens -----------------------------------------------------------------------------
def _token_matches(value: str, tokens: Iterable[tuple[str | None, str]]) -> bool:
    if "|" in value:
        system, code = value.split("|", 1)
        for have_system, have_code in tokens:
            if system == "" and have_system:
                continue
            if system and have_system != system:
                continue
            if code and have_code != code:
                continue
            return True
        return False
    return any(have_code == value for _, have_code in tokens)


# -- dates ------------------------------------------------------------------------------
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<time>[0-9:.]+)(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def date_range(text: str) -> tuple[datetime, datetime]:
    """The instant range [start, end) a FHIR date, dateTime or instant covers."""
    match = _DATE_RE.match(text.strip())
    if match is None:
        raise SearchError(f"not a FHIR date: {text[:40]!r}")
    year = int(match["y"])
    if match["m"] is None:
        return datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)
    month = int(match["m"])
    if match["d"] is None:
        end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
        return datetime(year, month, 1, tzinfo=UTC), end
    day = date(year, month, int(match["d"]))
    if match["time"] is None:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return start, start + timedelta(days=1)
    try:
        moment = datetime.fromisoformat(
            f"{day.isoformat()}T{match['time']}{(match['tz'] or 'Z').replace('Z', '+00:00')}"
        )
    except ValueError as exc:
        raise SearchError(f"not a FHIR dateTime: {text[:40]!r}") from exc
    return moment, moment + timedelta(seconds=1)


def _date_matches(value: str, dates: Iterable[str]) -> bool:
    prefix = "eq"
    if value[:2] in _PREFIXES:
        prefix, value = value[:2], value[2:]
    low, high = date_range(value)
    for text in dates:
        try:
            start, end = date_range(text)
        except SearchError:
            continue
        if prefix == "eq" and low <= start and end <= high:
            return True
        if prefix == "ap" and start < high and end > low:
            return True
        if prefix == "ne" and not (low <= start and end <= high):
            return True
        if prefix in ("gt", "sa") and end > high:
            return True
        if prefix in ("lt", "eb") and start < low:
            return True
        if prefix == "ge" and end > low:
            return True
        if prefix == "le" and start < high:
            return True
    return False


# -- strings ----------------------------------------------------------------------------
def _string_matches(value: str, strings: Iterable[str], modifier: str | None) -> bool:
    if modifier == "exact":
        return any(s == value for s in strings)
    if modifier == "contains":
        return any(value.casefold() in s.casefold() for s in strings)
    return any(s.casefold().startswith(value.casefold()) for s in strings)


def matches(resource: Resource, name: str, value: str, *, base_url: str) -> bool:
    """Does `resource` match one `name=value` search clause (value may hold OR commas)?"""
    param_name, _, modifier = name.partition(":")
    param = params_for(resource["resourceType"]).get(param_name)
    if param is None:
        raise SearchError(f"unknown search parameter {param_name!r}")
    alternatives = [v for v in value.split(",")] if value else [""]
    extracted = list(param.extract(resource))
    if modifier == "missing":
        missing = not extracted
        return missing == (value == "true")
    for alternative in alternatives:
        if param.kind == "token":
            hit = _token_matches(alternative, extracted)
            if modifier == "not":
                hit = not hit
        elif param.kind == "reference":
            target = modifier if modifier and modifier[:1].isupper() else param.target
            hit = _reference_matches(alternative, extracted, target, base_url)
        elif param.kind == "date":
            hit = _date_matches(alternative, extracted)
        else:
            hit = _string_matches(alternative, extracted, modifier or None)
        if hit:
            return True
    return False


def is_known(resource_type: str, name: str) -> bool:
    return name.partition(":")[0] in params_for(resource_type)


def sort_key_date(resource: Resource) -> str:
    """The resource's clinical date as a sortable string ('' when it has none)."""
    extract = SORT_DATE.get(resource.get("resourceType", ""))
    if extract is None:
        return ""
    for text in extract(resource):
        try:
            return date_range(text)[0].isoformat()
        except SearchError:
            continue
    return ""
