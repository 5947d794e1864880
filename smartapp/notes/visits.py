"""The visit: what decisions, edits and the saved draft belong to, across launches.

A clinician opens the sidebar many times for one visit (a new tab, the chart closed and
reopened, the EHR's session renewed); each is a new SMART launch. What they decided and
the draft they saved belong to the visit, not to one launch:

- (site, patient, encounter, clinician) when the launch has an encounter in context;
- (site, patient, clinician, the launch's local date) without one: the app cannot know
  the visit, and one draft per clinician, patient and day is what a clinic means by it
  (the date is the site's `[visits] timezone`, UTC by default);
- the launch alone when the EHR did not say who the clinician is (no `fhirUser`): the
  app never merges two people's drafts.

The key is a SHA-256 of those parts: fixed length, no PHI in an index, the same on every
process without a lookup. `saved_note.visit_key` is UNIQUE, so there is never a second
draft note for one visit, even when two tabs save at once.
SMART launch context: https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, date, tzinfo
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smartapp.smart.session import LaunchContext

#: Bumped if the parts ever change, so that old and new keys can never collide.
KEY_VERSION = "visit-1"


@dataclass(frozen=True, kw_only=True)
class Visit:
    key: str  # 64 hex characters
    #: "encounter", "day" or "launch": which rule made the key (shown to the sidebar).
    scope: str
    encounter_id: str | None = None
    day: date | None = None

    def to_json(self) -> dict[str, str | None]:
        return {
            "scope": self.scope,
            "encounter": self.encounter_id,
            "date": self.day.isoformat() if self.day else None,
        }


def _digest(*parts: str) -> str:
    # A separator no part can contain (issuers, ids and references are printable text).
    return hashlib.sha256("\x1f".join((KEY_VERSION, *parts)).encode("utf-8")).hexdigest()


def visit_of(launch: LaunchContext, *, timezone: tzinfo = UTC) -> Visit:
    """The visit this launch works on (see the module docstring for the rules)."""
    if not launch.fhir_user or not launch.patient_id:
        return Visit(key=_digest("launch", launch.session_id), scope="launch")
    who = (launch.iss, launch.patient_id, launch.fhir_user)
    if launch.encounter_id:
        return Visit(
            key=_digest(*who, "encounter", launch.encounter_id),
            scope="encounter",
            encounter_id=launch.encounter_id,
        )
    # The launch's own start, not "now": a launch that runs past midnight keeps its visit.
    day = launch.created_at.astimezone(timezone).date()
    return Visit(key=_digest(*who, "day", day.isoformat()), scope="day", day=day)
