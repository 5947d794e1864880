"""Unit: the LLM answer's one definition gives both the strict schema and the lenient reader."""

from __future__ import annotations

from typing import Any

from smartapp.suggestions.answer import ANSWER_SCHEMA, Answer


def objects(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node] if node.get("type") == "object" else []
        return found + [o for v in node.values() for o in objects(v)]
    if isinstance(node, list):
        return [o for v in node for o in objects(v)]
    return []


def test_schema_is_what_strict_structured_output_accepts():
    # OpenAI strict mode: every object closed, every property required, no $ref to resolve.
    found = objects(ANSWER_SCHEMA)
    assert len(found) == 3
    for obj in found:
        assert obj["additionalProperties"] is False
        assert sorted(obj["required"]) == sorted(obj["properties"])
    assert "$defs" not in ANSWER_SCHEMA and "$ref" not in repr(ANSWER_SCHEMA)
    suggestion = ANSWER_SCHEMA["properties"]["suggestions"]["items"]
    assert set(suggestion["properties"]) == {"title", "statements"}


def test_reader_keeps_readable_statements_and_drops_empty_cards():
    answer = Answer.model_validate(
        {
            "suggestions": [
                {"title": 7, "statements": [{"text": " a ", "citations": ["Condition/1", 3]}]},
                {"title": "nothing readable", "statements": [{"text": ""}]},
                "not a card",
            ],
            "extra": "ignored",
        }
    )
    assert [s.model_dump() for s in answer.suggestions] == [
        {"title": "", "statements": [{"text": "a", "citations": ["Condition/1"]}]}
    ]
