"""Whose resource is this? The one rule that keeps another patient's data out of a chart.

A search scoped to one patient can still answer with resources of another (a server bug,
a mis-merged record, a Group, a copy from another system). A resource is kept only when
its patient reference names the launch's patient in a form the FHIR spec allows
(https://hl7.org/fhir/R4/references.html): relative `Patient/<id>`, absolute on this FHIR
base, `_history` versions of either, a contained Patient (`#id`) whose identifiers are the
patient's, or a logical reference by `identifier` that matches the patient's. Everything
else — another id (FHIR ids are case-sensitive), another server, `urn:` references that
nothing here resolves, a Group, a display-only reference, or no patient reference at all —
is dropped, and the caller reports it. Matching by identifier needs the Patient resource,
so those verdicts wait for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Any


class Verdict(Enum):
    MINE = "mine"
    #: Only an identifier names the patient: decide once the Patient's identifiers are known.
    BY_IDENTIFIER = "by_identifier"
    OTHER = "other"


def identifier_keys(identifiers: Any) -> frozenset[tuple[str, str]]:
    """(system, value) pairs of a list of Identifiers (both parts required to count)."""
    keys: set[tuple[str, str]] = set()
    for item in identifiers if isinstance(identifiers, list) else ():
        if isinstance(item, Mapping):
            system, value = item.get("system"), item.get("value")
            if isinstance(system, str) and isinstance(value, str) and system and value:
                keys.add((system, value))
    return frozenset(keys)


def verdict(
    resource: Mapping[str, Any],
    field: str,
    *,
    patient_id: str,
    on_base: Callable[[str], bool],
    relative: Callable[[str], str],
) -> Verdict:
    """Whether `resource[field]` names the launch's patient (see the module docstring)."""
    value = resource.get(field)
    if not isinstance(value, Mapping):
        return Verdict.OTHER
    reference = value.get("reference")
    if isinstance(reference, str) and reference:
        if reference.startswith("#"):
            return _contained(resource, reference[1:])
        if "://" in reference:
            if not on_base(reference):
                return Verdict.OTHER
            try:
                reference = relative(reference)
            except Exception:  # whatever the caller's URL parser refuses names no one here
                return Verdict.OTHER
        if reference.startswith(("urn:", "/")) or "?" in reference:
            return Verdict.OTHER
        parts = reference.split("/_history/")[0].split("/")
        if len(parts) == 2 and parts[0] == "Patient" and parts[1] == patient_id:
            return Verdict.MINE
        return Verdict.OTHER
    if value.get("type") not in (None, "Patient"):
        return Verdict.OTHER
    if identifier_keys([value.get("identifier")]):
        return Verdict.BY_IDENTIFIER
    return Verdict.OTHER


def _contained(resource: Mapping[str, Any], local_id: str) -> Verdict:
    for inner in resource.get("contained") or ():
        if isinstance(inner, Mapping) and inner.get("id") == local_id:
            if inner.get("resourceType") == "Patient" and identifier_keys(inner.get("identifier")):
                return Verdict.BY_IDENTIFIER
            return Verdict.OTHER
    return Verdict.OTHER


def matches_identifiers(
    resource: Mapping[str, Any], field: str, patient_keys: Iterable[tuple[str, str]]
) -> bool:
    """For a BY_IDENTIFIER verdict: does the reference's identifier name the patient?"""
    known = frozenset(patient_keys)
    if not known:
        return False
    value = resource.get(field)
    if not isinstance(value, Mapping):
        return False
    reference = value.get("reference")
    if isinstance(reference, str) and reference.startswith("#"):
        for inner in resource.get("contained") or ():
            if isinstance(inner, Mapping) and inner.get("id") == reference[1:]:
                # Every identifier the contained Patient carries must be the patient's.
                keys = identifier_keys(inner.get("identifier"))
                return bool(keys) and keys <= known
        return False
    return bool(identifier_keys([value.get("identifier")]) & known)
