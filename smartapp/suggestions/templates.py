"""Per-kind Jinja2 templates that turn a suggestion's statements into its displayed text.

Templates run in Jinja2's `SandboxedEnvironment` because a site may supply its own
(https://jinja.palletsprojects.com/en/3.1.x/sandbox/): a site template must not reach
Python internals. Output is plain text (autoescape off); the sidebar escapes it when it
shows it. The statements stay the unit of citation and verification: a template only
arranges them (bullets or prose, concise or detailed) into `Suggestion.rendered_text`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from jinja2 import BaseLoader, ChoiceLoader, DictLoader, FileSystemLoader

from smartapp.suggestions.interfaces import Statement, Suggestion
from smartapp.templating import DEFAULT_TEMPLATE_DIR, TemplateSet, environment, inline_name

log = logging.getLogger(__name__)


class TemplateRenderer:
    """Renders suggestions with the site's templates, falling back to the shipped ones."""

    def __init__(self, templates: TemplateSet | None = None) -> None:
        self._set = templates or TemplateSet()
        loaders: list[BaseLoader] = []
        if self._set.inline:
            loaders.append(DictLoader({inline_name(k): v for k, v in self._set.inline.items()}))
        if self._set.directory is not None:
            loaders.append(FileSystemLoader(str(self._set.directory)))
        loaders.append(FileSystemLoader(str(DEFAULT_TEMPLATE_DIR)))
        self._env = environment(ChoiceLoader(loaders))
        self._defaults = environment(FileSystemLoader(str(DEFAULT_TEMPLATE_DIR)))

    def template_name(self, kind: str) -> str:
        if kind in self._set.inline:
            return inline_name(kind)
        return self._set.files.get(kind, f"{kind}.j2")

    def render(self, suggestion: Suggestion, *, style: str, detail: str) -> str:
        """The suggestion's text; the shipped template (then plain bullets) if the site's fails."""
        context = render_context(suggestion, style=style, detail=detail)
        try:
            return mark_unverified(
                _clean(self._env.get_template(self.template_name(suggestion.kind)).render(context)),
                suggestion.statements,
            )
        except Exception as exc:  # noqa: BLE001 - a site template is untrusted code
            # The error's type only (its message may quote chart data).
            log.warning(
                "site template for %s failed (%s); using the default",
                suggestion.kind,
                type(exc).__name__,
            )
        try:
            return mark_unverified(
                _clean(self._defaults.get_template(f"{suggestion.kind}.j2").render(context)),
                suggestion.statements,
            )
        except Exception:  # noqa: BLE001 - never lose the statements to a template
            return mark_unverified(
                "\n".join(f"- {s.text}" for s in suggestion.statements), suggestion.statements
            )


UNVERIFIED_MARK = "[unverified] "


def mark_unverified(text: str, statements: Sequence[Statement]) -> str:
    """`text` with the unverified marker before every unverified statement it shows.

    Applied after the template (site or shipped) has run, so no template can drop the
    marker: wherever an unverified statement's words appear without it, it is inserted.
    """
    for statement in statements:
        if statement.verified is not False or not statement.text.strip():
            continue
        words = statement.text.strip()
        position = 0
        while (found := text.find(words, position)) >= 0:
            if text[max(0, found - len(UNVERIFIED_MARK)) : found] != UNVERIFIED_MARK:
                text = text[:found] + UNVERIFIED_MARK + text[found:]
                found += len(UNVERIFIED_MARK)
            position = found + len(words)
    return text


def _clean(text: str) -> str:
    """Trailing spaces and runs of blank lines that template whitespace control leaves."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out)


def statement_context(statement: Statement) -> dict[str, Any]:
    return {
        "text": statement.text,
        "citations": [c.to_json() for c in statement.citations],
        "verified": statement.verified,
        "issues": list(statement.issues),
        "rule": statement.rule,
    }


def render_context(suggestion: Suggestion, *, style: str, detail: str) -> dict[str, Any]:
    """What a template sees (documented in config/site.example.toml)."""
    statements = [statement_context(s) for s in suggestion.statements]
    return {
        "kind": suggestion.kind,
        "title": suggestion.title,
        "style": style,
        "detail": detail,
        "engine": {
            "name": suggestion.engine.name,
            "version": suggestion.engine.version,
            "rule_based": suggestion.engine.rule_based,
            "fallback_reason": suggestion.engine.fallback_reason,
        },
        "statements": statements,
        "rules": list(dict.fromkeys(s["rule"] for s in statements if s["rule"])),
    }
