"""Free text leaving for an LLM, scrubbed of the patient's names and identifiers.

The compact chart already leaves out the Patient's name, MRN, address and telecom, but
free text (a dosage instruction, a problem typed by hand, an allergy's note) can carry
them: "call Jane at 555-0100". Every identifying value found anywhere in the chart — the
Patient's (and contained Patients') names, identifier values, telecom, address and
contacts, and the display and identifier of any reference to the patient — is replaced
in every string sent, whole-word and case-insensitively, by a placeholder naming what it
was. Resource references (`ref`) are left alone: they are how statements cite the chart.
HIPAA Safe Harbor lists these among the identifiers to remove:
https://www.hhs.gov/hipaa/for-professionals/privacy/special-topics/de-identification/
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from smartapp.fhir.snapshot import ChartSnapshot

NAME = "[patient name]"
IDENTIFIER = "[identifier]"
TELECOM = "[contact detail]"
ADDRESS = "[address]"

#: Keys whose values are chart references, never free text.
_REFERENCE_KEYS = frozenset({"ref", "alsoRef"})
#: Shorter name parts ("Al", "Jo") are kept: scrubbing them would eat ordinary words.
_MIN_NAME_CHARS = 3
_MIN_VALUE_CHARS = 3
_PATIENT_REFERENCE_KEYS = ("subject", "patient", "beneficiary")


class Scrubber:
    """Replaces one chart's identifying values in text; built once per chart."""

    def __init__(self, found: Mapping[str, str]) -> None:
        # Longest first, so "Jane Q Public" goes whole before "Jane" alone.
        self._values = sorted(found.items(), key=lambda item: -len(item[0]))
        self._pattern = (
            re.compile("|".join(_pattern_for(value) for value, _ in self._values), re.IGNORECASE)
            if self._values
            else None
        )
        self._labels = {_normalize(value): label for value, label in self._values}

    def text(self, value: str) -> str:
        if self._pattern is None:
            return value
        return self._pattern.sub(self._label, value)

    def _label(self, match: re.Match[str]) -> str:
        return self._labels.get(_normalize(match.group(0)), IDENTIFIER)

    def chart(self, value: Any, *, key: str | None = None) -> Any:
        """A copy of a compact chart (JSON values) with every string scrubbed but references."""
        if key in _REFERENCE_KEYS:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.chart(item, key=key) for item in value]
        if isinstance(value, dict):
            return {k: self.chart(v, key=k) for k, v in value.items()}
        return value


def scrubber_for(snapshot: ChartSnapshot, *, keep_name: bool = False) -> Scrubber:
    """A Scrubber for everything identifying in the chart (names kept if the site sends them)."""
    found: dict[str, str] = {}

    def add(value: Any, label: str, minimum: int = _MIN_VALUE_CHARS) -> None:
        if isinstance(value, str) and len(value.strip()) >= minimum:
            found.setdefault(" ".join(value.split()), label)

    for patient in _patients(snapshot):
        people: list[Mapping[str, Any]] = [patient]
        people += [c for c in _list(patient.get("contact")) if isinstance(c, Mapping)]
        for person in people:
            if not keep_name:
                for name in _list(person.get("name")) or [person.get("name")]:
                    _add_name(name, add)
            for identifier in _list(person.get("identifier")):
                if isinstance(identifier, Mapping):
                    add(identifier.get("value"), IDENTIFIER)
            for telecom in _list(person.get("telecom")):
                if isinstance(telecom, Mapping):
                    add(telecom.get("value"), TELECOM)
            for address in _list(person.get("address")) or [person.get("address")]:
                _add_address(address, add)
    for reference in _patient_references(snapshot):
        if not keep_name:
            add(reference.get("display"), NAME)
        identifier = reference.get("identifier")
        if isinstance(identifier, Mapping):
            add(identifier.get("value"), IDENTIFIER)
    return Scrubber(found)


def _add_name(name: Any, add: Any) -> None:
    if not isinstance(name, Mapping):
        return
    add(name.get("text"), NAME)
    given = [g for g in _list(name.get("given")) if isinstance(g, str)]
    family = name.get("family") if isinstance(name.get("family"), str) else None
    if given or family:
        add(" ".join([*given, family or ""]).strip(), NAME)
    for part in [*given, family]:
        add(part, NAME, _MIN_NAME_CHARS)


def _add_address(address: Any, add: Any) -> None:
    if not isinstance(address, Mapping):
        return
    add(address.get("text"), ADDRESS)
    for line in _list(address.get("line")):
        add(line, ADDRESS)
    # City and postal code identify; a state or country on its own does not (Safe Harbor
    # keeps the state).
    add(address.get("city"), ADDRESS)
    add(address.get("postalCode"), ADDRESS)


def _patients(snapshot: ChartSnapshot) -> Iterable[Mapping[str, Any]]:
    yield snapshot.patient
    for resource in snapshot.all_resources():
        for contained in _list(resource.get("contained")):
            if isinstance(contained, Mapping) and contained.get("resourceType") == "Patient":
                yield contained


def _patient_references(snapshot: ChartSnapshot) -> Iterable[Mapping[str, Any]]:
    for resource in snapshot.all_resources():
        for key in _PATIENT_REFERENCE_KEYS:
            reference = resource.get(key)
            if isinstance(reference, Mapping):
                yield reference


def _pattern_for(value: str) -> str:
    digits = re.sub(r"\D", "", value)
    if len(digits) >= 7 and len(digits) >= len(re.sub(r"\s", "", value)) - 4:
        # A phone number or a numeric identifier: match it however it is punctuated.
        return r"(?<!\d)" + r"[\s().+\-]*".join(digits) + r"(?!\d)"
    words = [re.escape(word) for word in value.split()]
    return r"(?<!\w)" + r"\W+".join(words) + r"(?!\w)"


def _normalize(text: str) -> str:
    digits = re.sub(r"\D", "", text)
    if len(digits) >= 7 and len(digits) >= len(re.sub(r"\s", "", text)) - 4:
        return digits
    return " ".join(re.findall(r"\w+", text.lower()))


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
