"""The only patient traits the governance metrics keep: an age band and administrative sex.

Recorded on a shown suggestion when it is first shown, for the fairness view of the safety
measures (issue 12: by age band and sex, in local data, no PHI). A band of years, never the
birth date; `Patient.gender` as FHIR's administrative-gender code
(https://hl7.org/fhir/R4/valueset-administrative-gender.html), never a name or identifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.suggestions.facts import age_on, as_of

#: (lowest age, highest age or None, label): the bands the metrics report.
AGE_BANDS: tuple[tuple[int, int | None, str], ...] = (
    (0, 17, "0-17"),
    (18, 44, "18-44"),
    (45, 64, "45-64"),
    (65, 79, "65-79"),
    (80, None, "80+"),
)
#: No birth date in the chart (age band), or no usable gender (sex).
UNKNOWN = "unknown"
#: FHIR administrative-gender codes, as Patient.gender carries them.
SEXES = ("female", "male", "other", "unknown")


def age_band(age: int | None) -> str:
    if age is None or age < 0:
        return UNKNOWN
    for low, high, label in AGE_BANDS:
        if age >= low and (high is None or age <= high):
            return label
    return UNKNOWN  # unreachable: the last band is open


def sex_of(patient: Mapping[str, Any]) -> str:
    gender = patient.get("gender")
    return gender if isinstance(gender, str) and gender in SEXES else UNKNOWN


@dataclass(frozen=True, kw_only=True)
class Demographics:
    age_band: str
    sex: str


def demographics(patient: Mapping[str, Any], day: date) -> Demographics:
    """The patient's band on `day` (the day the chart was read) and administrative sex."""
    return Demographics(age_band=age_band(age_on(patient, day)), sex=sex_of(patient))


def of_snapshot(snapshot: ChartSnapshot) -> Demographics:
    return demographics(snapshot.patient, as_of(snapshot))
