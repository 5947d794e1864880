"""Unit: the LLM answer's one definition gives both the strict schema and the lenient reader."""

from __future__ import annotations

from typing import Any

from smartapp.kinds import KINDS
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
    assert set(suggestion["properties"]) == {"kind", "title", "statements"}
    # A strict server can only name one of our kinds; the engine still checks which.
    assert suggestion["properties"]["kind"] == {"type": "string", "enum": list(KINDS)}


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
        {"kind": "", "title": "", "statements": [{"text": "a", "citations": ["Condition/1"]}]}
    ]


def test_reader_keeps_the_kind_the_model_wrote_for_the_engine_to_judge():
    cards = [
        {"kind": " care_gaps ", "statements": [{"text": "a", "citations": []}]},
        {"kind": 7, "statements": [{"text": "b", "citations": []}]},
        {"kind": None, "statements": [{"text": "c", "citations": []}]},
    ]
    answer = Answer.model_validate({"suggestions": cards})
    assert [s.kind for s in answer.suggestions] == ["care_gaps", "7", ""]
