"""The sandbox's documentation history: twelve weeks of visits and their notes by every
EHR clinician, six before and six after a go-live date, for the baseline demo.

Deterministic for a seed. Two clinicians (Lovelace and Laennec, the demo's app users)
close their notes sooner and write a little more after go-live; the other two do not
change. The weeks end three weeks before the charts' reference date, so no history visit
is any patient's latest. Synthetic text, no real person.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from smartapp.sandbox.population import CLINICIANS, LOINC, Clinician

Resource = dict[str, Any]

#: Monday of the first history week (ISO 2026-W27) and the go-live (2026-W33).
HISTORY_START = date(2026, 6, 29)
GO_LIVE = date(2026, 8, 10)
WEEKS = 12
#: (median lag in hours before go-live, note length in characters) per clinician.
_HABITS = {
    "dr-ada-lovelace": (20.0, 1400),
    "dr-rene-laennec": (30.0, 1100),
    "np-mary-seacole": (12.0, 900),
    "dr-william-osler": (26.0, 1250),
}
#: Who changes after go-live: lag × 0.5, length × 1.15.
DEMO_APP_USERS = frozenset({"dr-ada-lovelace", "dr-rene-laennec"})

_SENTENCES = (
    "Seen for a scheduled follow-up visit.",
    "Symptoms reviewed; no new concerns reported.",
    "Medicines reconciled with the patient.",
    "Examination unremarkable apart from findings noted above.",
    "Results from the last panel discussed.",
    "Plan: continue current management and review in three months.",
    "Safety-netting advice given.",
)


def documentation_history(patient_ids: Sequence[str], *, seed: int) -> list[Resource]:
    """Encounters and their DocumentReferences (each note after its encounter)."""
    if not patient_ids:
        return []
    rng = random.Random(f"history:{seed}")
    resources: list[Resource] = []
    number = 0
    for week in range(WEEKS):
        monday = HISTORY_START + timedelta(weeks=week)
        after = monday >= GO_LIVE
        for clinician in CLINICIANS:
            lag_hours, length = _HABITS.get(clinician.id, (24.0, 1000))
            if after and clinician.id in DEMO_APP_USERS:
                lag_hours, length = lag_hours * 0.5, int(length * 1.15)
            for _ in range(rng.randint(4, 7)):
                number += 1
                patient = patient_ids[number % len(patient_ids)]
                day = monday + timedelta(days=rng.randrange(0, 5))
                start = datetime(day.year, day.month, day.day, 8, 0, tzinfo=UTC) + timedelta(
                    minutes=rng.randrange(0, 8 * 60)
                )
                end = start + timedelta(minutes=rng.choice((20, 30, 40)))
                lag = timedelta(hours=max(0.1, rng.lognormvariate(0, 0.5) * lag_hours))
                chars = max(200, int(rng.gauss(length, length * 0.12)))
                encounter = _encounter(number, patient, clinician, start, end)
                resources.append(encounter)
                resources.append(_note(number, patient, clinician, encounter, end + lag, chars))
    return resources


def _instant(when: datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def _encounter(
    number: int, patient: str, clinician: Clinician, start: datetime, end: datetime
) -> Resource:
    return {
        "resourceType": "Encounter",
        "id": f"hx-enc-{number:04d}",
        "status": "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "AMB",
            "display": "ambulatory",
        },
        "subject": {"reference": f"Patient/{patient}"},
        "participant": [
            {
                "individual": {
                    "reference": f"Practitioner/{clinician.id}",
                    "display": clinician.display,
                }
            }
        ],
        "period": {"start": _instant(start), "end": _instant(end)},
    }


def _note(
    number: int,
    patient: str,
    clinician: Clinician,
    encounter: Resource,
    written: datetime,
    chars: int,
) -> Resource:
    body = ""
    index = number
    while len(body) < chars:
        body += _SENTENCES[index % len(_SENTENCES)] + " "
        index += 1
    text = body[:chars]
    return {
        "resourceType": "DocumentReference",
        "id": f"hx-doc-{number:04d}",
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [{"system": LOINC, "code": "11506-3", "display": "Progress note"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "date": _instant(written),
        "author": [{"reference": f"Practitioner/{clinician.id}", "display": clinician.display}],
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
                    "title": "Progress note",
                }
            }
        ],
        "context": {
            "encounter": [{"reference": f"Encounter/{encounter['id']}"}],
            "period": dict(encounter["period"]),
        },
    }
