"""The clinical context every engine must honour, read once from the chart.

Pregnancy (an active, confirmed pregnancy Condition or a pregnancy-status Observation that
says pregnant), the patient's age band, whether the patient has died. Which resources may be
used for facts at all (`usable`): one carrying a `modifierExtension` the app does not
understand may change the meaning of everything in it, so it is not used (the chart loader
reports it). Value sets come from `smartapp/clinical/data/valuesets/`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smartapp import clinical
from smartapp.fhir.parsing import UNDERSTOOD_MODIFIERS
from smartapp.fhir.snapshot import FHIRResource

PAEDIATRIC_BELOW = 18
OLDER_FROM = 65

_NOT_CURRENT_VERIFICATION = {"refuted", "entered-in-error", "provisional", "differential"}
_PREGNANT_ANSWERS = {"77386006"}  # SNOMED CT "Pregnant" as a pregnancy-status answer


def usable(resource: Mapping[str, Any]) -> bool:
    """False when the resource has a modifier extension the app does not understand."""
    modifiers = resource.get("modifierExtension")
    if not modifiers:
        return True
    if not isinstance(modifiers, list):
        return False
    return all(isinstance(m, Mapping) and m.get("url") in UNDERSTOOD_MODIFIERS for m in modifiers)


def _status(concept: Any) -> str | None:
    if not isinstance(concept, Mapping):
        return None
    for coding in concept.get("coding") or ():
        if isinstance(coding, Mapping) and isinstance(coding.get("code"), str):
            return str(coding["code"])
    return None


def current_condition(cond: Mapping[str, Any]) -> bool:
    """Active and not provisional, differential, refuted or entered in error."""
    if not usable(cond) or _status(cond.get("verificationStatus")) in _NOT_CURRENT_VERIFICATION:
        return False
    clinical_status = _status(cond.get("clinicalStatus"))
    if clinical_status is None:
        return not (cond.get("abatementDateTime") or cond.get("abatementPeriod"))
    return clinical_status in ("active", "recurrence", "relapse")


@dataclass(frozen=True, kw_only=True)
class PatientContext:
    age: int | None
    deceased: bool
    #: The resources that say the patient is pregnant (empty: not known to be pregnant).
    pregnancy: tuple[FHIRResource, ...]

    @property
    def pregnant(self) -> bool:
        return bool(self.pregnancy)

    @property
    def paediatric(self) -> bool:
        return self.age is not None and self.age < PAEDIATRIC_BELOW

    @property
    def older(self) -> bool:
        return self.age is not None and self.age >= OLDER_FROM


def pregnancy_evidence(
    conditions: tuple[FHIRResource, ...], observations: tuple[FHIRResource, ...]
) -> tuple[FHIRResource, ...]:
    pregnancy = clinical.value_set("pregnancy")
    status = clinical.value_set("pregnancy_status")
    found = [c for c in conditions if current_condition(c) and pregnancy.matches(c.get("code"))]
    readings = [
        o
        for o in observations
        if usable(o)
        and o.get("status") in ("final", "amended", "corrected")
        and status.matches(o.get("code"))
    ]
    readings.sort(key=lambda o: str(o.get("effectiveDateTime") or ""), reverse=True)
    if readings:
        answer = readings[0].get("valueCodeableConcept")
        codes = {
            str(c.get("code")) for c in (answer or {}).get("coding") or () if isinstance(c, Mapping)
        }
        if codes & _PREGNANT_ANSWERS:
            found.append(readings[0])
        elif not found:
            return ()
    return tuple(found)
