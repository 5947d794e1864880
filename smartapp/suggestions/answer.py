"""The LLM's answer, one definition: the JSON schema we ask for and the reader of what comes back.

The schema goes to servers that support structured output (OpenAI's `response_format`
with `strict`: https://platform.openai.com/docs/guides/structured-outputs); the same
models read the answer, leniently, because servers without structured output answer
from the prompt alone and a stray statement must not cost the clinician the others.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from smartapp.kinds import KINDS

#: A statement longer than this is cut: a chart summary's bullet is never this long.
MAX_STATEMENT_CHARS = 1200

# Strict mode wants every object closed (`additionalProperties: false`); reading, we
# ignore what a looser server adds.
_CLOSED = ConfigDict(
    extra="ignore",
    json_schema_extra={"additionalProperties": False},
    json_schema_serialization_defaults_required=True,
)


class AnswerStatement(BaseModel):
    """One sentence or bullet, with the `ref` of every chart fact it uses."""

    model_config = _CLOSED

    text: str
    citations: list[str]

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("empty statement")
        return value[:MAX_STATEMENT_CHARS]

    @field_validator("citations", mode="before")
    @classmethod
    def _citations(cls, value: Any) -> Any:
        # Models often give a lone citation as a string.
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [c.strip() for c in value if isinstance(c, str) and c.strip()]
        return value


class AnswerSuggestion(BaseModel):
    """One card: the kind it is for, an optional topic title and its statements."""

    model_config = _CLOSED

    #: The kind the model says the card is for: the engine shows it only when that is the
    #: kind it asked for (`smartapp.suggestions.llm.screen_kinds`). Strict servers must name
    #: one of the kinds; a server without structured output may leave it out ("": the kind
    #: asked for) or write anything (kept as said, so that it is refused).
    kind: str = Field(default="", json_schema_extra={"enum": list(KINDS)})
    title: str = ""
    statements: list[AnswerStatement]

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, value: Any) -> Any:
        if value is None:
            return ""
        return value.strip() if isinstance(value, str) else repr(value)

    @field_validator("title", mode="before")
    @classmethod
    def _title(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else ""

    @field_validator("statements", mode="before")
    @classmethod
    def _statements(cls, value: Any) -> Any:
        # Keep the readable statements; drop the others one by one.
        if not isinstance(value, list):
            return value
        kept = []
        for raw in value:
            try:
                kept.append(AnswerStatement.model_validate(raw))
            except ValidationError:
                continue
        return kept


class Answer(BaseModel):
    """The whole answer: `{"suggestions": [...]}`."""

    model_config = _CLOSED

    suggestions: list[AnswerSuggestion]

    @field_validator("suggestions", mode="before")
    @classmethod
    def _suggestions(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        kept = []
        for raw in value:
            try:
                item = AnswerSuggestion.model_validate(raw)
            except ValidationError:
                continue
            if item.statements:
                kept.append(item)
        return kept


def offered_statements(data: Any) -> int:
    """How many statements the raw answer offered, readable or not."""
    if not isinstance(data, dict) or not isinstance(data.get("suggestions"), list):
        return 0
    return sum(
        len(item["statements"])
        for item in data["suggestions"]
        if isinstance(item, dict) and isinstance(item.get("statements"), list)
    )


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema inlined and without annotations: the subset strict mode accepts everywhere."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            out = {
                k: walk(v)
                for k, v in node.items()
                if k not in ("$defs", "title", "description", "default", "properties")
            }
            if "properties" in node:  # property names are not annotations
                out["properties"] = {k: walk(v) for k, v in node["properties"].items()}
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result


#: The answer's shape as a JSON schema: every property required, every object closed.
ANSWER_SCHEMA: dict[str, Any] = _strict(Answer.model_json_schema(mode="serialization"))
