"""One fact, one card: a result stated in several cards is kept in one and pointed to from
the others ("HbA1c and eGFR: see Assessment and plan: Type 2 diabetes mellitus").

A clinician reads the sidebar top to bottom and the note is the cards they accept; a blood
pressure stated in five cards is read five times. So, across the cards drafted for one
chart, every Observation that a statement cites as a fact gets one home card, chosen by
what the card is for (`HOME_PRIORITY`: the problem-oriented assessment and plan first,
where the clinician needs the number with its trend and goal; then the results card; then
the others), ties going to the card shown first. In every other card, a statement that
states a result homed elsewhere says its `brief` instead (the same claim without the
values, pointing to the home; to other problems' blocks of its own kind by those problems'
names, "(see Essential hypertension)"), or, without one, is replaced by one cross-reference
line per home card. Cross-references cite what they point at (`Statement.see` says they are not
facts). A rewritten statement passes the grounding verifier again; one that does not keeps
its original text (a repeat is better than an unverified sentence).

Left alone: safety flags (a warning shows the result that raised it, where it is raised)
and patient-facing kinds (a separate document for another reader).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from smartapp import kinds as K
from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.suggestions.facts import capitalize, has_code, result_name
from smartapp.suggestions.grounding import GroundingVerifier
from smartapp.suggestions.interfaces import Citation, Statement, Suggestion
from smartapp.suggestions.terminology import BP_DIASTOLIC, BP_PANEL, BP_SYSTOLIC, LOINC

#: Where a result is stated when several cards state it: lower first. Kinds not listed
#: come after these.
HOME_PRIORITY: Mapping[str, int] = {
    K.ASSESSMENT_PLAN: 0,
    K.VITALS_LABS: 1,
    K.PROBLEM_SUMMARY: 2,
    K.CARE_GAPS: 3,
    K.MEDICATIONS: 4,
    K.ALLERGIES: 5,
}

#: Kinds written for the patient, not the clinician's note: they keep their own numbers.
PATIENT_FACING: frozenset[str] = frozenset({K.PATIENT_INSTRUCTIONS})

#: How a cross-reference names a card of each kind.
SHORT_LABELS: Mapping[str, str] = {
    K.PROBLEM_SUMMARY: "Problem summary",
    K.MEDICATIONS: "Medications",
    K.VITALS_LABS: "Vitals and labs",
    K.ASSESSMENT_PLAN: "Assessment and plan",
    K.CARE_GAPS: "Care gaps",
    K.ALLERGIES: "Allergies",
}

#: The keys of `Suggestion.extra` naming the problem an assessment-and-plan card is about,
#: and its Condition ("Condition/id"): a cross-reference to the card cites it.
PROBLEM = "problem"
PROBLEM_REFERENCE = "problemReference"


def is_fact(statement: Statement) -> bool:
    """True when the statement's citations are facts it states (not a cross-reference)."""
    return statement.see is None


def stated_results(statement: Statement) -> list[str]:
    """The Observations a statement states as facts ("Observation/id"), in citation order."""
    if not is_fact(statement):
        return []
    return [c.reference for c in statement.citations if c.reference.startswith("Observation/")]


def _exempt(suggestion: Suggestion, statement: Statement | None = None) -> bool:
    if suggestion.kind in PATIENT_FACING:
        return True
    return statement is not None and statement.rule_id is not None


def _priority(kind: str) -> int:
    return HOME_PRIORITY.get(kind, len(HOME_PRIORITY))


def homes(suggestions: Sequence[Suggestion]) -> dict[str, int]:
    """For each Observation stated as a fact: the index of the card that keeps it."""
    best: dict[str, tuple[int, int]] = {}
    for index, suggestion in enumerate(suggestions):
        if _exempt(suggestion):
            continue
        for statement in suggestion.statements:
            if _exempt(suggestion, statement):
                continue
            for reference in stated_results(statement):
                rank = (_priority(suggestion.kind), index)
                if reference not in best or rank < best[reference]:
                    best[reference] = rank
    return {reference: index for reference, (_, index) in best.items()}


def label(suggestion: Suggestion) -> str:
    """How a cross-reference names this card."""
    base = SHORT_LABELS.get(suggestion.kind, K.KIND_LABELS.get(suggestion.kind, suggestion.kind))
    problem = suggestion.extra.get(PROBLEM)
    return f"{base}: {problem}" if isinstance(problem, str) and problem else base


def _kind_label(kind: str) -> str:
    return SHORT_LABELS.get(kind, K.KIND_LABELS.get(kind, kind))


def _target(cards: Sequence[Suggestion], cited: Sequence[Citation] = ()) -> str:
    """One card's label; several cards of one kind, or a card about a problem the
    statement already names (cites), are named by the kind."""
    labels = list(dict.fromkeys(label(c) for c in cards))
    problem = cards[0].extra.get(PROBLEM_REFERENCE)
    if len(labels) == 1 and not any(c.reference == problem for c in cited):
        return labels[0]
    return _kind_label(cards[0].kind)


def _subject(cards: Sequence[Suggestion]) -> list[Citation]:
    """The Condition of the one problem card pointed to: the label names it, so it is cited."""
    problems = {c.extra.get(PROBLEM_REFERENCE) for c in cards}
    if len(problems) != 1:
        return []
    reference = problems.pop()
    for statement in cards[0].statements:
        for citation in statement.citations:
            if citation.reference == reference:
                return [citation]
    return []


def _names(snapshot: ChartSnapshot, references: Sequence[str]) -> str:
    names: list[str] = []
    for reference in references:
        resource = snapshot.get(reference)
        if resource is None:
            name = "result"
        elif has_code(resource.get("code"), LOINC, (*BP_PANEL, *BP_SYSTOLIC, *BP_DIASTOLIC)):
            name = "blood pressure"  # a panel and its parts are one reading
        else:
            name = result_name(resource)
        if name.lower() not in (n.lower() for n in names):
            names.append(name)
    if len(names) > 1:
        return capitalize(", ".join(names[:-1]) + " and " + names[-1])
    return capitalize(names[0])


@dataclass
class _Pointer:
    """A cross-reference line being built for one card: what moved, and to which kind."""

    position: int
    references: list[str]
    citations: dict[str, Citation]


def deduplicate(suggestions: Sequence[Suggestion], verifier: GroundingVerifier) -> list[Suggestion]:
    """The cards with every result stated in one card only (see the module docstring)."""
    home = homes(suggestions)
    snapshot = verifier.snapshot
    out: list[Suggestion] = []
    for index, suggestion in enumerate(suggestions):
        if _exempt(suggestion):
            out.append(suggestion)
            continue
        kept: list[Statement] = []
        pointers: dict[str, _Pointer] = {}  # by the home cards' kind
        for statement in suggestion.statements:
            moved = [r for r in stated_results(statement) if home.get(r, index) != index]
            if not moved or _exempt(suggestion, statement):
                kept.append(statement)
                continue
            cards = [suggestions[i] for i in dict.fromkeys(home[r] for r in moved)]
            if statement.brief:
                problems = [c.extra.get(PROBLEM) for c in cards]
                if all(c.kind == suggestion.kind for c in cards) and all(
                    isinstance(p, str) and p for p in problems
                ):
                    # Other problems' blocks of this kind: named by their problems, as the
                    # assessment's own pointers are ("Statin: see Hyperlipidemia"); "see
                    # Assessment and plan" within the assessment and plan points nowhere.
                    target = " and ".join(dict.fromkeys(str(p) for p in problems))
                    named = True
                else:
                    target = _target(cards, statement.citations)
                    named = target != _kind_label(cards[0].kind)  # the label names a problem
                extra = [
                    c
                    for group in cards
                    for c in _subject([group])
                    if named and c not in statement.citations
                ]
                rewritten = replace(
                    statement,
                    text=f"{statement.brief} (see {target})",
                    citations=(*statement.citations, *extra),
                    see=target,
                    brief=None,
                )
                kept.append(rewritten if verifier.check(rewritten).ok else statement)
                continue
            pointer = pointers.setdefault(
                cards[0].kind, _Pointer(position=len(kept), references=[], citations={})
            )
            for reference in moved:
                if reference not in pointer.references:
                    pointer.references.append(reference)
            for citation in statement.citations:
                if citation.reference in moved:
                    pointer.citations.setdefault(citation.reference, citation)
        # Insert the pointer lines where the first statement they replace stood.
        for kind, pointer in sorted(
            pointers.items(), key=lambda item: item[1].position, reverse=True
        ):
            cards = [suggestions[home[r]] for r in pointer.references]
            cards = [c for c in cards if c.kind == kind] or cards
            target = _target(cards)
            subject = _subject(cards) if target != _kind_label(kind) else []
            line = Statement(
                text=f"{_names(snapshot, pointer.references)}: see {target}",
                citations=(*pointer.citations.values(), *subject),
                see=target,
                verified=True,
            )
            check = verifier.check(line)
            if not check.ok:
                continue  # the moved facts stay in their home card either way
            kept.insert(pointer.position, line)
        out.append(suggestion.with_statements(tuple(kept)))
    return out
