"""What a suggestion engine is: it reads a chart snapshot and returns cited statements.

`suggestions/` knows neither Flask nor HTTP to the EHR: engines take a `ChartSnapshot`
and the site's configuration and return `Suggestion`s, each made of `Statement`s that
cite the FHIR resources they came from. The grounding verifier checks those citations
before anything reaches a clinician.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from smartapp.fhir.snapshot import ChartSnapshot


@dataclass(frozen=True, kw_only=True)
class Citation:
    reference: str  # "Observation/123"
    display: str  # what the sidebar shows for it: "HbA1c 7.2 % (2025-11-02)"

    def to_json(self) -> dict[str, str]:
        return {"reference": self.reference, "display": self.display}


@dataclass(frozen=True, kw_only=True)
class Statement:
    """One sentence (or bullet) of a suggestion and the resources it came from."""

    text: str
    citations: tuple[Citation, ...]
    #: Set by the grounding verifier: True checked, False failed (shown only if the site allows).
    verified: bool | None = None
    #: Why verification failed, in words a clinician can act on (no PHI in logs: this is UI only).
    issues: tuple[str, ...] = ()
    #: The site rule that produced a rule-based statement ("HbA1c at least every 6 months"):
    #: configuration, not a claim about the chart, so the verifier does not check it against
    #: the citations. Engines other than the built-in rules leave it None.
    rule: str | None = None
    #: The id of the clinical safety rule (a data file entry) that raised this statement:
    #: "pregnancy-ace-inhibitor". Its source is named in `rule`.
    rule_id: str | None = None
    #: Set on a cross-reference: the card that states the facts this statement cites
    #: ("Assessment and plan: Type 2 diabetes mellitus"). Its citations point the way; they
    #: are not facts stated here (smartapp.suggestions.crossref).
    see: str | None = None
    #: What this statement says when the results it cites are stated in another card: the
    #: same claim without their values ("Diabetes: HbA1c done within the interval"). None:
    #: the statement is dropped there and the card points to the other one instead.
    brief: str | None = None
    #: Drug names a rule-based plan option offers as the choice ("consider low-dose
    #: aspirin"), from the reviewed plan_options.toml: not a claim that the chart holds
    #: them, so the verifier does not look for them in the citations. Only the built-in
    #: rules set it (an engine's answer cannot).
    proposes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "text": self.text,
            "citations": [c.to_json() for c in self.citations],
            "verified": self.verified,
            "issues": list(self.issues),
        }
        if self.rule:
            data["rule"] = self.rule
        if self.rule_id:
            data["ruleId"] = self.rule_id
        if self.see:
            data["see"] = self.see
        return data


@dataclass(frozen=True, kw_only=True)
class EngineInfo:
    name: str  # "builtin-rules", "llm"
    version: str  # engine version, or "model@version" for an LLM
    rule_based: bool = False
    #: Set when this output comes from a fallback (e.g. the LLM failed): says why.
    fallback_reason: str | None = None
    #: The rules standing in while the configured LLM's draft of this kind is on its way.
    interim: bool = False

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "version": self.version}
        if self.rule_based:
            data["ruleBased"] = True
        if self.fallback_reason:
            data["fallbackReason"] = self.fallback_reason
        if self.interim:
            data["interim"] = True
        return data


@dataclass(frozen=True, kw_only=True)
class Verification:
    """The grounding verifier's verdict on one suggestion (counts feed the metrics)."""

    checked: int = 0
    passed: int = 0
    dropped: int = 0
    unverified_shown: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "checked": self.checked,
            "passed": self.passed,
            "dropped": self.dropped,
            "unverifiedShown": self.unverified_shown,
        }


@dataclass(frozen=True, kw_only=True)
class Suggestion:
    kind: str  # "problem_summary", "medications", ...
    title: str
    statements: tuple[Statement, ...]
    engine: EngineInfo
    #: Rendered text, when a template formats the statements (bullets or prose).
    rendered_text: str | None = None
    verification: Verification | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        if self.rendered_text is not None:
            return self.rendered_text
        return "\n".join(f"- {s.text}" for s in self.statements)

    @property
    def citations(self) -> tuple[Citation, ...]:
        seen: dict[str, Citation] = {}
        for statement in self.statements:
            for citation in statement.citations:
                seen.setdefault(citation.reference, citation)
        return tuple(seen.values())

    def with_statements(self, statements: tuple[Statement, ...], **changes: Any) -> Suggestion:
        return replace(self, statements=statements, **changes)


class SuggestionEngine(Protocol):
    """A source of suggestions. Implementations: the built-in rules, an LLM."""

    info: EngineInfo

    def kinds(self) -> tuple[str, ...]:
        """The suggestion kinds this engine can produce."""
        ...

    def suggest(
        self, snapshot: ChartSnapshot, kind: str, config: Mapping[str, Any]
    ) -> list[Suggestion]:
        """Suggestions of one kind for this chart; [] when nothing applies."""
        ...
