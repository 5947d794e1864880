"""How a site's saved note is laid out: its type (LOINC), its sections, and the after-visit summary.

The site file's `[note]` and `[after_visit_summary]` tables (config/site.example.toml)
become these values; `smartapp.notes.composer` fills them from the clinician's decisions.
A note's sections hold *parts*: what each kind of suggestion contributes (the problem
list, results, the assessment and the plan of each problem, ...). Every part is placed in
exactly one section, so nothing the clinician accepted can fall out of the note; patient
instructions are never a part: they go to the after-visit summary, a document of its own.

- US Core DocumentReference type (every LOINC code of scale Doc):
  https://hl7.org/fhir/us/core/ValueSet-us-core-documentreference-type.html
- LOINC check digit (mod 10): https://loinc.org/kb/faq/structure/
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

LOINC = "http://loinc.org"

#: What a note section may hold, in the order the composer fills a section.
PARTS: tuple[str, ...] = (
    "problems",  # the problem summary: each problem with its onset
    "allergies",  # allergies and intolerances
    "results",  # vitals and results (and summary lines that only report a result)
    "medications",  # the medication list and its reconciliation hints
    "assessment",  # per problem: status, results, treatment (assessment_plan)
    "plan",  # per problem: what is due and the options to consider (assessment_plan)
    "health_maintenance",  # care gaps: screening, immunizations, monitoring
)

#: The sub-heading a part gets inside its section ("" = none: its lines speak for
#: themselves). The assessment and the plan are grouped under each problem's name.
DEFAULT_LABELS: Mapping[str, str] = {
    "problems": "",
    "allergies": "Allergies",
    "results": "",
    "medications": "Medication reconciliation",
    "assessment": "",
    "plan": "",
    "health_maintenance": "Health maintenance",
}

_LOINC_CODE = re.compile(r"^(\d{1,7})-(\d)$")


def loinc_check_digit(digits: str) -> int:
    """LOINC's mod-10 (Luhn) check digit of the part before the hyphen."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 == 0 else 1)
        total += value // 10 + value % 10
    return (10 - total % 10) % 10


def loinc_problem(code: str) -> str | None:
    """None if `code` is a well-formed LOINC code with the right check digit, else why not."""
    match = _LOINC_CODE.match(code)
    if match is None:
        return f"{code!r} is not a LOINC code (digits, a hyphen and a check digit: 11506-3)"
    if loinc_check_digit(match.group(1)) != int(match.group(2)):
        return f"{code!r} is not a LOINC code (its check digit is wrong)"
    return None


@dataclass(frozen=True, kw_only=True)
class DocumentType:
    """DocumentReference.type: a LOINC document code and its display."""

    code: str
    display: str

    def coding(self) -> dict[str, str]:
        return {"system": LOINC, "code": self.code, "display": self.display}


#: LOINC 11506-3 "Progress note" (US Core's example clinical note type).
PROGRESS_NOTE = DocumentType(code="11506-3", display="Progress note")
#: LOINC 69730-0 "Instructions": "instructions given to a patient" (scale Doc, so a valid
#: US Core DocumentReference type); the patient-facing after-visit summary.
PATIENT_INSTRUCTIONS = DocumentType(code="69730-0", display="Instructions")


@dataclass(frozen=True, kw_only=True)
class NoteSection:
    heading: str
    parts: tuple[str, ...]


DEFAULT_SECTIONS: tuple[NoteSection, ...] = (
    NoteSection(heading="Subjective", parts=("problems", "allergies")),
    NoteSection(heading="Objective", parts=("results",)),
    NoteSection(heading="Assessment", parts=("assessment",)),
    NoteSection(heading="Plan", parts=("plan", "medications", "health_maintenance")),
)


@dataclass(frozen=True, kw_only=True)
class NoteLayout:
    """The clinician's note (`[note]`): type, sections (SOAP by default), sub-headings."""

    type: DocumentType = PROGRESS_NOTE
    sections: tuple[NoteSection, ...] = DEFAULT_SECTIONS
    labels: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_LABELS))

    def label(self, part: str) -> str:
        return self.labels.get(part, DEFAULT_LABELS.get(part, ""))


#: Reading grades a site may ask for (Flesch-Kincaid grade levels).
MIN_READING_GRADE, MAX_READING_GRADE = 3, 12


@dataclass(frozen=True, kw_only=True)
class AfterVisitSummary:
    """The patient's after-visit summary (`[after_visit_summary]`): its own DocumentReference."""

    #: Offer "also save the patient instructions as an after-visit summary" when saving.
    offer: bool = True
    type: DocumentType = PATIENT_INSTRUCTIONS
    title: str = "After-visit summary"
    #: The highest Flesch-Kincaid grade the instructions should read at.
    reading_grade: int = 6
