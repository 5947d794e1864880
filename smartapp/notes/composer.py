"""The note a clinician saves, composed from the suggestions they accepted or edited.

One function, `compose`, makes both the sidebar's preview and the text written to the
chart, so the preview is the note. It writes what a clinician writes, not a printout:

- **Sections** from the site's layout (`smartapp.note_layout`; SOAP by default). Each
  statement goes to its part: a summary line about a problem to the problems
  (Subjective), one that only reports a result to the results (Objective), an
  assessment-and-plan block's status, results and treatment to the Assessment and its
  "consider …" and "… due" lines to the Plan (both under the problem's name), the
  medication list to its reconciliation part, care gaps to Health maintenance.
- **No engine labels.** Card titles ("… (rule-based, for review)"), the `[unverified]`
  marker and the templates' "(sources: …)" and "Rules applied" lines stay in the sidebar;
  which engine drafted what is recorded in the Provenance and the AI label.
- **Unverified statements are never written as fact.** An accepted suggestion's
  statements that the grounding verifier could not confirm are left out (and listed in
  `omitted`, which the preview shows). In an edit, a line that still carries the
  `[unverified]` marker is left out too; a line from which the clinician removed the
  marker is the clinician's own text and is kept.
- **No patient-facing sentences.** Patient instructions never enter the clinician's note:
  they become the after-visit summary's text, a separate document the clinician chooses
  to save.

Which engines' text the note holds (`engines`) decides its AI label: a note of the
clinician's own text only is not labelled AI-assisted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from smartapp import kinds as K
from smartapp.note_layout import NoteLayout
from smartapp.notes.composition import Contribution
from smartapp.notes.readability import grade_level
from smartapp.suggestions.crossref import SHORT_LABELS

#: The sidebar's marker before an unverified statement (smartapp.suggestions.templates).
_MARKER = re.compile(r"\[unverified\]\s*", re.IGNORECASE)
_BULLET = re.compile(r"^[-*•]\s+")
#: The shipped templates' decorations of a detailed card: sources and rules, not note text.
_DECORATION = re.compile(r"^(\(sources: .*\)|Rules applied: .*)$")
#: A result-only summary line cites nothing but measurements.
_RESULT_TYPES = frozenset({"Observation", "DiagnosticReport"})
#: The words that start a plan line ("Consider an SGLT2 inhibitor: …"); "due" anywhere
#: makes one too ("HbA1c due: none on file"). Engine-agnostic: LLM blocks are routed alike.
_PLAN_VERBS = frozenset(
    """consider recheck repeat start stop continue increase decrease reduce refer order
    schedule follow check discuss counsel monitor titrate switch hold resume obtain arrange
    recommend plan review""".split()
)
_DUE = re.compile(r"\bdue\b", re.IGNORECASE)

_KIND_PART = {
    K.PROBLEM_SUMMARY: "problems",
    K.VITALS_LABS: "results",
    K.MEDICATIONS: "medications",
    K.ALLERGIES: "allergies",
    K.ASSESSMENT_PLAN: "assessment",
    K.CARE_GAPS: "health_maintenance",
}

UNVERIFIED_LEFT_OUT = (
    "not verified against the chart: edit the suggestion and remove the [unverified] "
    "marker to keep it"
)


@dataclass(frozen=True, kw_only=True)
class Decided:
    """One suggestion the clinician accepted or edited, as the sidebar showed it."""

    id: str
    kind: str
    title: str
    text: str  # the card's text (the template's rendering of the statements)
    statements: Sequence[Mapping[str, Any]]  # the statements' JSON (text, citations, verified)
    engine: tuple[str, str]  # (name, version)
    action: str  # "accept" or "edit"
    final_text: str | None = None  # the clinician's text, for an edit


@dataclass(frozen=True, kw_only=True)
class Omitted:
    suggestion: str
    kind: str
    text: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {
            "suggestion": self.suggestion,
            "kind": self.kind,
            "text": self.text,
            "reason": self.reason,
        }


@dataclass(frozen=True, kw_only=True)
class _Line:
    text: str
    source: Decided
    bullet: bool = True
    part: str = "assessment"
    group: str = ""
    #: The card a cross-reference points to ("Assessment and plan: Atrial fibrillation").
    see: str | None = None

    def render(self) -> str:
        return f"- {self.text}" if self.bullet else self.text


@dataclass(frozen=True, kw_only=True)
class ComposedSection:
    heading: str
    text: str

    def to_json(self) -> dict[str, str]:
        return {"heading": self.heading, "text": self.text}


@dataclass(frozen=True, kw_only=True)
class Piece:
    """One line a suggestion put in a document, and who drafted it."""

    text: str
    action: str  # "accept" or "edit"
    suggestion: str
    engine: tuple[str, str]


@dataclass(frozen=True, kw_only=True)
class Document:
    """One composed document: its text, and where its lines came from."""

    text: str = ""
    pieces: tuple[Piece, ...] = ()

    @property
    def used(self) -> tuple[str, ...]:
        """The suggestions with a line in it, in order."""
        return tuple(dict.fromkeys(p.suggestion for p in self.pieces))

    @property
    def engines(self) -> tuple[tuple[str, str], ...]:
        """(name, version) of every engine that drafted a line of it."""
        return tuple(sorted({p.engine for p in self.pieces}))

    @property
    def contributions(self) -> tuple[Contribution, ...]:
        return tuple(Contribution(action=p.action, text=p.text) for p in self.pieces)

    @property
    def ai_assisted(self) -> bool:
        """Whether any of its text was drafted by an engine (else it is the clinician's own)."""
        return bool(self.pieces)


@dataclass(frozen=True, kw_only=True)
class ComposedNote:
    note: Document
    sections: tuple[ComposedSection, ...] = ()
    #: The after-visit summary's text (patient instructions), "" when none was accepted.
    patient: Document = field(default_factory=Document)
    omitted: tuple[Omitted, ...] = ()

    @property
    def text(self) -> str:
        return self.note.text

    @property
    def patient_grade(self) -> float:
        return grade_level(self.patient.text)


def compose(decided: Iterable[Decided], layout: NoteLayout | None = None) -> ComposedNote:
    """The clinician's note (and the after-visit summary's text) from the decided suggestions."""
    layout = layout or NoteLayout()
    note_lines: list[_Line] = []
    patient_lines: list[_Line] = []
    omitted: list[Omitted] = []
    for item in decided:
        if item.action not in ("accept", "edit"):
            continue
        lines = _lines(item, omitted)
        (patient_lines if item.kind == K.PATIENT_INSTRUCTIONS else note_lines).extend(lines)
    note_lines = _pointed(_unique(note_lines), layout)
    sections = _sections(note_lines, layout)
    note = _document("\n\n".join(f"{s.heading}\n{s.text}" for s in sections), note_lines)
    patient = _unique(patient_lines)
    return ComposedNote(
        note=note,
        sections=tuple(sections),
        patient=_document("\n".join(line.render() for line in patient), patient),
        omitted=tuple(omitted),
    )


def as_written(text: str, composed: Document) -> Document:
    """A note the clinician wrote in full (`text`), with the composed lines it still holds.

    Only those lines' engines label it: a note of the clinician's own words is not
    labelled AI-assisted.
    """
    return Document(text=text, pieces=tuple(p for p in composed.pieces if p.text.strip() in text))


def has_unverified_marker(text: str) -> bool:
    return bool(_MARKER.search(text))


# -- from one suggestion to lines --------------------------------------------------------


def _normal(text: str) -> str:
    return " ".join(text.split()).rstrip(".").strip()


def _problem(item: Decided) -> str:
    """The problem an assessment-and-plan block is about, from its title, without labels."""
    title = re.sub(r"\s*\([^()]*\)\s*$", "", item.title).strip()
    label = K.KIND_LABELS.get(item.kind, "")
    if label and title.lower().startswith(label.lower()):
        title = title[len(label) :].lstrip(" :—-")
    return title


def _route(item: Decided, statement: Mapping[str, Any] | None, text: str) -> str:
    if item.kind == K.PROBLEM_SUMMARY and statement is not None:
        types = {str(c.get("reference", "")).split("/")[0] for c in statement.get("citations", [])}
        if types and types <= _RESULT_TYPES:
            return "results"
    if item.kind == K.ASSESSMENT_PLAN:
        first = re.split(r"\W+", text.strip().lower(), maxsplit=1)[0] if text.strip() else ""
        return "plan" if first in _PLAN_VERBS or _DUE.search(text) else "assessment"
    return _KIND_PART.get(item.kind, "assessment")


def _statement_lines(item: Decided, omitted: list[Omitted]) -> list[_Line]:
    group = _problem(item) if item.kind == K.ASSESSMENT_PLAN else ""
    lines = []
    for statement in item.statements:
        text = str(statement.get("text", "")).strip()
        if not text:
            continue
        if statement.get("verified") is False:
            omitted.append(
                Omitted(suggestion=item.id, kind=item.kind, text=text, reason=UNVERIFIED_LEFT_OUT)
            )
            continue
        lines.append(
            _Line(
                text=text,
                source=item,
                part=_route(item, statement, text),
                group=group,
                see=statement.get("see"),
            )
        )
    return lines


def _drop_marked(line: str, unverified: Sequence[str]) -> tuple[str, list[str]]:
    """`line` without the statements it still marks unverified, and those statements."""
    dropped: list[str] = []
    for text in sorted(unverified, key=len, reverse=True):
        pattern = re.compile(r"\[unverified\]\s*" + re.escape(text) + r"\.?", re.IGNORECASE)
        if pattern.search(line):
            line = pattern.sub("", line)
            dropped.append(text)
    marker = _MARKER.search(line)
    if marker is not None:
        # Marked, then changed: what follows the marker is still unconfirmed.
        dropped.append(line[marker.end() :].strip())
        line = line[: marker.start()]
    return " ".join(line.split()), dropped


def _lines(item: Decided, omitted: list[Omitted]) -> list[_Line]:
    final = item.final_text if item.action == "edit" else None
    if final is None or _normal(final) == _normal(item.text):
        return _statement_lines(item, omitted)
    by_text = {_normal(str(s.get("text", ""))): s for s in item.statements}
    unverified = [
        str(s.get("text", "")).strip() for s in item.statements if s.get("verified") is False
    ]
    group = _problem(item) if item.kind == K.ASSESSMENT_PLAN else ""
    part = _KIND_PART.get(item.kind, "assessment")
    lines: list[_Line] = []
    for raw in final.splitlines():
        text = raw.strip()
        if not text:
            continue
        bullet = bool(_BULLET.match(text))
        text = _BULLET.sub("", text)
        if _MARKER.search(text):
            text, dropped = _drop_marked(text, unverified)
            omitted.extend(
                Omitted(suggestion=item.id, kind=item.kind, text=d, reason=UNVERIFIED_LEFT_OUT)
                for d in dropped
                if d
            )
            if not text:
                continue
        if _DECORATION.match(text):
            continue
        statement = by_text.get(_normal(text))
        if statement is not None or item.kind == K.ASSESSMENT_PLAN:
            # A line of the clinician's own follows the line before it (same part).
            routed = _route(item, statement, text)
            if statement is not None or routed == "plan":
                part = routed
        see = statement.get("see") if statement is not None else None
        lines.append(_Line(text=text, source=item, bullet=bullet, part=part, group=group, see=see))
    return lines


def _unique(lines: Sequence[_Line]) -> list[_Line]:
    """Each line once: the summary and the trends may state the same result."""
    seen: set[str] = set()
    out = []
    for line in lines:
        key = _normal(line.text).lower()
        if key in seen:
            continue
        seen.add(key)
        out.append(line)
    return out


def _pointed(lines: Sequence[_Line], layout: NoteLayout) -> list[_Line]:
    """Cross-references between cards made into references within the note.

    "INR: see Assessment and plan: Atrial fibrillation" names a card; in the note it
    becomes "INR: see Assessment (Atrial fibrillation)", the section that holds it. A
    pointer to a card the clinician did not put in the note points at nothing: the line
    goes, and a statement that only carries the pointer keeps its words without it.
    """
    kinds = {v: k for k, v in SHORT_LABELS.items()}
    present = {(line.source.kind, line.group) for line in lines}
    heading_of = {part: s.heading for s in layout.sections for part in s.parts}
    out = []
    for line in lines:
        if not line.see:
            out.append(line)
            continue
        if line.source.kind == K.ASSESSMENT_PLAN and line.see.partition(": ")[0] not in kinds:
            # One problem's block pointing to another's ("Statin: see Hyperlipidemia"): in
            # the note that block is under its problem's name, in the same section.
            kept = _to_problem(line, there=(K.ASSESSMENT_PLAN, line.see) in present)
            if kept is not None:
                out.append(kept)
            continue
        base, _, problem = line.see.partition(": ")
        kind = kinds.get(base)
        there = kind is not None and any(
            k == kind and (not problem or group == problem) for k, group in present
        )
        heading = heading_of.get(_KIND_PART.get(kind or "", ""), "") if there else ""
        pointer = f": see {line.see}"
        suffix = f" (see {line.see})"
        if line.text.endswith(pointer):
            if heading:
                where = f"{heading} ({problem})" if problem else heading
                out.append(replace(line, text=line.text[: -len(pointer)] + f": see {where}"))
        elif line.text.endswith(suffix):
            where = f"{heading}, {problem}" if problem else heading
            text = line.text[: -len(suffix)] + (f" (see {where})" if heading else "")
            out.append(replace(line, text=text))
        else:
            out.append(line)  # the clinician's words: left as written
    return out


_SEE_TAIL = re.compile(r":\s*see [^()]+$")
_SEE_SUFFIX = re.compile(r"\s*\(see [^()]+\)$")


def _to_problem(line: _Line, *, there: bool) -> _Line | None:
    """An assessment-and-plan pointer to another problem's block: kept as written when
    that block is in the note; else a line that is only the pointer goes and a statement
    that carries one keeps its words without it."""
    if there:
        return line
    if _SEE_TAIL.search(line.text):
        return None
    if _SEE_SUFFIX.search(line.text):
        return replace(line, text=_SEE_SUFFIX.sub("", line.text))
    return line


# -- from lines to the note ---------------------------------------------------------------


def _sections(lines: Sequence[_Line], layout: NoteLayout) -> list[ComposedSection]:
    out = []
    for section in layout.sections:
        blocks: list[str] = []
        for part in section.parts:
            in_part = [line for line in lines if line.part == part]
            if not in_part:
                continue
            label = layout.label(part)
            groups: dict[str, list[_Line]] = {}
            for line in in_part:
                groups.setdefault(line.group, []).append(line)
            body: list[str] = [f"{label}:"] if label else []
            for name, grouped in groups.items():
                if name:
                    body.append(f"{name}:")
                body += [line.render() for line in grouped]
            blocks.append("\n".join(body))
        if blocks:
            out.append(ComposedSection(heading=section.heading, text="\n".join(blocks)))
    return out


def _document(text: str, lines: Sequence[_Line]) -> Document:
    return Document(
        text=text,
        pieces=tuple(
            Piece(
                text=line.text,
                action=line.source.action,
                suggestion=line.source.id,
                engine=line.source.engine,
            )
            for line in lines
            if line.text in text
        ),
    )
