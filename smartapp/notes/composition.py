"""Where a saved note's characters came from: accepted suggestions, edited ones, the clinician.

"Is it saving time?" needs more than acceptance counts: a note whose accepted suggestions
were then rewritten by hand saved little. At save time the note's text is compared with
the text each used suggestion contributed (its own text when accepted, the clinician's
final text when edited); what is found counts as accepted or edited characters, the rest
as typed by the clinician. A contribution the clinician changed inside a free-text note is
not found and counts as typed — the measure errs towards crediting the clinician.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Contribution:
    action: str  # "accept" or "edit"
    text: str


@dataclass(frozen=True, kw_only=True)
class Composition:
    total: int
    accepted: int
    edited: int
    edits: int

    @property
    def typed(self) -> int:
        return max(0, self.total - self.accepted - self.edited)


def composition(note: str, contributions: Iterable[Contribution]) -> Composition:
    accepted = edited = edits = 0
    remaining = note
    for item in contributions:
        piece = item.text.strip()
        if item.action == "edit":
            edits += 1
        if not piece or piece not in remaining:
            continue
        # Each contribution is counted once, even if its words recur elsewhere in the note.
        remaining = remaining.replace(piece, "", 1)
        if item.action == "edit":
            edited += len(piece)
        else:
            accepted += len(piece)
    return Composition(total=len(note), accepted=accepted, edited=edited, edits=edits)
