"""What a site's suggestion templates are, and whether one compiles: the part the site file
and the engines share (`smartapp.siteconfig` validates, `smartapp.suggestions.templates`
renders). Jinja2 sandbox: https://jinja.palletsprojects.com/en/3.1.x/sandbox/
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import BaseLoader, DictLoader, StrictUndefined, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

#: The templates that ship with the app (`<kind>.j2` and the shared `_macros.j2`).
DEFAULT_TEMPLATE_DIR = Path(__file__).resolve().parent / "suggestions" / "templates"

STYLES = ("bullets", "prose")
DETAILS = ("concise", "detailed")


def _sentence(text: str) -> str:
    """`text` ending with a full stop, for prose (statements are written without one)."""
    text = text.strip()
    return text if not text or text[-1] in ".!?:" else text + "."


def environment(loader: BaseLoader) -> SandboxedEnvironment:
    """The sandboxed Jinja2 environment every suggestion template runs in (site or shipped)."""
    env = SandboxedEnvironment(
        loader=loader,
        autoescape=False,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["sentence"] = _sentence
    return env


def inline_name(kind: str) -> str:
    """The loader name of a kind's inline template from the site configuration."""
    return f"inline:{kind}"


def check_template(source: str, name: str) -> str | None:
    """None if `source` compiles; otherwise `line N: message` (for start-up validation)."""
    try:
        environment(DictLoader({})).parse(source, name=name)
    except TemplateSyntaxError as exc:
        return f"line {exc.lineno}: {exc.message}"
    return None


@dataclass(frozen=True, kw_only=True)
class TemplateSet:
    """Where a site's templates come from: a directory, inline sources, per-kind file names."""

    directory: Path | None = None
    #: kind → template source given inline in the site configuration.
    inline: Mapping[str, str] = field(default_factory=dict)
    #: kind → template file name (looked up in `directory`, then among the defaults).
    files: Mapping[str, str] = field(default_factory=dict)
