"""Integration (Flask test client, real store, a fake OpenAI-compatible server over loopback
HTTP): a card of the LLM's answer that names a kind not enabled on this request, an unknown
kind or another kind than the one asked is dropped unseen, counted in `/metrics` and logged
by reason and count only."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smartapp import create_app
from smartapp.fhir.cache import SnapshotCache
from tests.conftest import make_settings

from .llm_support import HeldLLM, held_llm
from .views_support import fixture_snapshot, launch

pytestmark = pytest.mark.integration

# care_gaps is left out of the site file: off on every request.
SITE = """
[suggestions]
kinds = ["problem_summary", "medications"]

[kinds.problem_summary]
engine = "llm"

[llm]
model = "fake-model"
version = "2026-11-01"
"""

MARK = "LEAKED-CARD"


def _card(kind: str | None, problem: dict[str, Any], words: str) -> dict[str, Any]:
    """A card the grounding check passes: the problem's own name, citing it."""
    card: dict[str, Any] = {
        "title": "",
        "statements": [{"text": f"{problem['text']} {words}", "citations": [problem["ref"]]}],
    }
    if kind is not None:
        card["kind"] = kind
    return card


@pytest.fixture
def held() -> Iterator[tuple[HeldLLM, str]]:
    with held_llm() as running:
        yield running


@pytest.fixture
def started(tmp_path: Path, held: tuple[HeldLLM, str]) -> Iterator[tuple[Any, Any, HeldLLM]]:
    fake, base = held
    site = tmp_path / "site.toml"
    site.write_text(SITE, encoding="utf-8")
    app = create_app(
        make_settings(
            tmp_path, SMARTAPP_CONFIG=str(site), SMARTAPP_LLM_BASE_URL=base, SMARTAPP_LLM_MODEL="m"
        )
    )
    app.config["TESTING"] = True
    db = app.extensions["smartapp.db"]
    db.drop_all()
    db.upgrade()
    client = app.test_client()
    context = launch(app, client)
    SnapshotCache(db, ttl_seconds=600).put(context.session_id, fixture_snapshot())
    try:
        yield app, client, fake
    finally:
        fake.release.set()
        app.extensions["smartapp.engines"].close()
        db.dispose()


def _arrived(app: Any, client: Any, fake: HeldLLM) -> dict[str, Any]:
    client.get("/api/suggestions")
    fake.release.set()
    app.extensions["smartapp.engines"].close()  # every LLM answer stored
    body: dict[str, Any] = client.get("/api/suggestions").get_json()
    assert body["pending"] == []
    return body


def _refused(client: Any) -> dict[str, float]:
    text = client.get("/metrics").get_data(as_text=True)
    found = re.findall(
        r'^smartapp_llm_cards_refused_total\{kind="([a-z_]+)",reason="([a-z_]+)"\} ([0-9.]+)$',
        text,
        re.MULTILINE,
    )
    return {f"{kind}/{reason}": float(n) for kind, reason, n in found}


def test_cards_for_other_kinds_are_dropped_counted_and_never_shown(started, caplog):
    app, client, fake = started
    fake.cards = lambda problem: [
        _card("problem_summary", problem, "is on the problem list"),
        _card("care_gaps", problem, f"{MARK} off on this request"),
        _card("care-gaps", problem, f"{MARK} a kind that does not exist"),
        _card("medications", problem, f"{MARK} another card's kind"),
        _card("problem_summary", problem, "named by its own kind"),
        _card(None, problem, "naming no kind"),
    ]
    with caplog.at_level(logging.WARNING):
        body = _arrived(app, client, fake)
    summary = [s for s in body["suggestions"] if s["kind"] == "problem_summary"]
    assert {s["engine"]["name"] for s in summary} == {"llm"}
    shown = " ".join(st["text"] for s in body["suggestions"] for st in s["statements"])
    assert "is on the problem list" in shown
    assert "named by its own kind" in shown and "naming no kind" in shown
    assert MARK not in shown and MARK not in repr(body)
    assert _refused(client) == {
        "problem_summary/not_enabled": 1.0,
        "problem_summary/unknown": 1.0,
        "problem_summary/other_kind": 1.0,
    }
    logged = [r.getMessage() for r in caplog.records if "for another kind" in r.getMessage()]
    assert logged == [
        "LLM answer for problem_summary: 3 card(s) for another kind dropped "
        "(not_enabled 1, other_kind 1, unknown 1)"
    ]
    # Reasons and counts only: neither the cards' words nor the names the model wrote.
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if MARK in m or "care-gaps" in m]


def test_an_answer_only_for_other_kinds_is_replaced_by_the_rules(started):
    app, client, fake = started
    fake.cards = lambda problem: [_card("care_gaps", problem, MARK)]
    body = _arrived(app, client, fake)
    summary = [s for s in body["suggestions"] if s["kind"] == "problem_summary"]
    assert summary and {s["engine"]["name"] for s in summary} == {"builtin-rules"}
    assert "other kinds" in summary[0]["engine"]["fallbackReason"]
    assert MARK not in repr(body)
    assert _refused(client) == {"problem_summary/not_enabled": 1.0}
