"""Integration (Flask test client, real store, a fake OpenAI-compatible server over loopback
HTTP): the sidebar never waits on the LLM. The rules answer at once, the LLM's drafts replace
them as each kind arrives, a decision made meanwhile is never lost, every kind is asked at
once under one deadline (a hanging endpoint costs the request that deadline and holds no LLM
thread past it), and the process asks the LLM at most `SMARTAPP_LLM_CONCURRENCY`
requests at a time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smartapp import create_app
from smartapp.fhir.cache import SnapshotCache
from smartapp.notes.views import NOT_ARRIVED
from smartapp.siteconfig import parse_site_config
from smartapp.suggestions.registry import LLMSettings, SuggestionService
from tests.conftest import make_settings

from .llm_support import HeldLLM, held_llm
from .views_support import fixture_snapshot, launch

pytestmark = pytest.mark.integration

LLM_KINDS = ("problem_summary", "vitals_labs", "allergies")

SITE = """
[suggestions]
kinds = ["problem_summary", "medications", "vitals_labs", "allergies"]

[kinds.problem_summary]
engine = "llm"

[kinds.vitals_labs]
engine = "llm"

[kinds.allergies]
engine = "llm"

[llm]
model = "fake-model"
version = "2026-11-01"
timeout_seconds = {timeout}
"""

@pytest.fixture
def held() -> Iterator[tuple[HeldLLM, str]]:
    with held_llm() as running:
        yield running


def _app(tmp_path: Path, base_url: str, *, timeout: float = 30, concurrency: int = 8) -> Any:
    site = tmp_path / "site.toml"
    site.write_text(SITE.format(timeout=timeout), encoding="utf-8")
    settings = make_settings(
        tmp_path,
        SMARTAPP_CONFIG=str(site),
        SMARTAPP_LLM_BASE_URL=base_url,
        SMARTAPP_LLM_MODEL="env-model",
        SMARTAPP_LLM_CONCURRENCY=str(concurrency),
    )
    app = create_app(settings)
    app.config["TESTING"] = True
    db = app.extensions["smartapp.db"]
    db.drop_all()
    db.upgrade()
    return app


@pytest.fixture
def started(tmp_path, held):
    """An app whose site puts three kinds on the held LLM, and a clinician's launch."""
    fake, base = held
    app = _app(tmp_path, base)
    client = app.test_client()
    context = launch(app, client)
    SnapshotCache(app.extensions["smartapp.db"], ttl_seconds=600).put(
        context.session_id, fixture_snapshot()
    )
    try:
        yield app, client, fake, context
    finally:
        fake.release.set()
        app.extensions["smartapp.engines"].close()
        app.extensions["smartapp.db"].dispose()


def _arrive(app: Any, fake: HeldLLM) -> None:
    """Let the LLM answer, and wait until every answer is stored (the LLM threads end)."""
    fake.release.set()
    app.extensions["smartapp.engines"].close()


def _by_kind(body: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for s in body["suggestions"]:
        found.setdefault(s["kind"], []).append(s)
    return found


def test_rules_answer_while_every_llm_kind_is_still_being_asked(started):
    app, client, fake, context = started
    fake.expect = len(LLM_KINDS)
    first = client.get("/api/suggestions")
    assert first.status_code == 200
    body = first.get_json()
    # Answered while the LLM holds every request: nothing waited on it.
    assert fake.answered == 0
    assert [p["kind"] for p in body["pending"]] == list(LLM_KINDS)
    cards = _by_kind(body)
    stand_in = cards["problem_summary"][0]["engine"]
    assert stand_in["name"] == "builtin-rules" and stand_in["interim"] is True
    assert "AI draft is being written" in stand_in["fallbackReason"]
    assert "interim" not in cards["medications"][0]["engine"]  # a rules kind is final
    # Every LLM kind is asked at once, not in turn.
    assert fake.all_inside.wait(10)
    assert sorted(fake.arrived) == sorted(LLM_KINDS)
    polled = client.get("/api/suggestions/pending").get_json()
    assert sorted(p["kind"] for p in polled["pending"]) == sorted(LLM_KINDS)


def test_llm_drafts_replace_the_stand_ins_in_place(started):
    app, client, fake, context = started
    first = client.get("/api/suggestions").get_json()
    order = [s["kind"] for s in first["suggestions"]]
    _arrive(app, fake)
    assert client.get("/api/suggestions/pending").get_json() == {"pending": []}
    after = client.get("/api/suggestions").get_json()
    assert after["pending"] == []
    cards = _by_kind(after)
    [summary] = cards["problem_summary"]
    assert summary["engine"]["name"] == "llm"
    assert "is on the problem list" in summary["text"]
    assert all(st["verified"] for st in summary["statements"])
    # The LLM said nothing for two kinds: their stand-ins are withdrawn, as its answer says.
    assert "vitals_labs" not in cards and "allergies" not in cards
    assert cards["medications"] == _by_kind(first)["medications"]  # untouched, same ids
    # The LLM's card sits where its kind's stand-in was.
    kinds_after = [s["kind"] for s in after["suggestions"]]
    assert kinds_after == [k for k in dict.fromkeys(order) if k in cards]


def test_a_decision_on_a_stand_in_before_the_llm_arrives_is_kept(started):
    app, client, fake, context = started
    first = _by_kind(client.get("/api/suggestions").get_json())
    decided = first["problem_summary"][0]
    undecided = first["vitals_labs"][0]
    headers = {"X-CSRF-Token": context.csrf_token}
    assert (
        client.post(
            f"/api/suggestions/{decided['id']}/feedback", json={"action": "accept"}, headers=headers
        ).status_code
        == 200
    )
    _arrive(app, fake)
    cards = _by_kind(client.get("/api/suggestions").get_json())
    kept = next(s for s in cards["problem_summary"] if s["id"] == decided["id"])
    assert kept["decision"]["action"] == "accept"
    assert kept["engine"]["kept"] is True
    assert kept["engine"]["fallbackReason"].startswith("you decided on it before")
    assert "interim" not in kept["engine"]
    # The LLM's own card comes after it, to decide on its own.
    llm = [s for s in cards["problem_summary"] if s["engine"]["name"] == "llm"]
    assert len(llm) == 1 and llm[0]["decision"] is None
    # The undecided stand-in was replaced: deciding on it now says so, and records nothing.
    late = client.post(
        f"/api/suggestions/{undecided['id']}/feedback", json={"action": "accept"}, headers=headers
    )
    assert late.status_code == 404
    assert "replaced" in late.get_json()["error"]["message"]
    # The accepted stand-in is still in the note.
    note = app.extensions["smartapp.sidebar"].compose_note(context).text
    # (its words; a cross-reference to a card not in the note is left out of it)
    assert decided["statements"][0]["text"].split(" (see ")[0] in note


def test_a_stand_in_whose_llm_draft_never_arrives_says_so(started):
    app, client, fake, context = started
    client.get("/api/suggestions")
    db = app.extensions["smartapp.db"]
    from sqlalchemy import update

    from smartapp.db import utcnow
    from smartapp.feedback.models import DraftedKind

    # As if the process asking the LLM had died: the kinds are past their due time.
    with db.session() as session:
        session.execute(update(DraftedKind).values(pending_until=utcnow()))
    body = client.get("/api/suggestions").get_json()
    assert body["pending"] == []
    stand_in = _by_kind(body)["problem_summary"][0]["engine"]
    assert stand_in["fallbackReason"] == NOT_ARRIVED
    assert "interim" not in stand_in


def test_llm_requests_per_process_are_bounded(tmp_path, held):
    fake, base = held
    config = parse_site_config(SITE.format(timeout=30))
    settings = LLMSettings.from_values(base, "env-model", None)
    engines = SuggestionService(config, settings, llm_concurrency=2)
    fake.expect = 2
    try:
        started = engines.start(fixture_snapshot(), kinds=LLM_KINDS)
        assert fake.all_inside.wait(10)
        assert len(fake.arrived) == 2  # the third waits for a free LLM thread
        fake.release.set()
        runs = {k: f.result(timeout=30) for k, f in started.pending.items()}
    finally:
        engines.close()
    assert fake.most_inside == 2 and fake.answered == 3
    assert runs["problem_summary"].suggestions[0].engine.name == "llm"


def test_a_kind_still_queued_at_the_deadline_falls_back_without_asking(tmp_path, held):
    fake, base = held  # never released during the run: the endpoint hangs
    config = parse_site_config(SITE.format(timeout=1))
    settings = LLMSettings.from_values(base, "env-model", None)
    engines = SuggestionService(config, settings, llm_concurrency=1)
    try:
        run = engines.run(fixture_snapshot(), kinds=("problem_summary", "allergies"))
    finally:
        fake.release.set()
        engines.close()
    first, second = run.kinds
    assert "timed out" in (first.fallback_reason or "")
    assert "busy" in (second.fallback_reason or "")
    assert fake.arrived == ["problem_summary"]  # one deadline: the second was never sent


def test_a_hanging_endpoint_costs_one_deadline_and_holds_no_llm_thread(tmp_path, held):
    fake, base = held  # holds every request until released: never, during the run
    config = parse_site_config(SITE.format(timeout=0.4))
    settings = LLMSettings.from_values(base, "env-model", None)
    engines = SuggestionService(config, settings, llm_concurrency=len(LLM_KINDS))
    fake.expect = len(LLM_KINDS)
    try:
        started = engines.start(fixture_snapshot(), kinds=LLM_KINDS)
        assert fake.all_inside.wait(10)  # all asked at once
        runs = [f.result(timeout=10) for f in started.pending.values()]
        finished = time.monotonic()
        # One deadline for the request, not one per kind in turn (3 x 0.4 s).
        assert finished - started.deadline < 0.4
        assert all("timed out" in (r.fallback_reason or "") for r in runs)
        # The endpoint still holds those three requests; the LLM threads do not wait on
        # them: the next clinician's kinds are all asked, none "busy" unasked.
        again = engines.start(fixture_snapshot(), kinds=LLM_KINDS)
        later = [f.result(timeout=10) for f in again.pending.values()]
        assert len(fake.arrived) == 2 * len(LLM_KINDS)
        assert not any("busy" in (r.fallback_reason or "") for r in later)
    finally:
        fake.release.set()
        engines.close()
