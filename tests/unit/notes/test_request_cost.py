"""Unit (Flask test client, real store): what one sidebar request costs the store.

SQLAlchemy's `before_cursor_execute` event counts every statement sent, so a change that
brings back a query per kind (governance read afresh, the chart parsed again, drafts
recomputed) fails here instead of in a load test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import responses
from sqlalchemy import event

from smartapp.db import Database
from smartapp.fhir.cache import SnapshotCache
from smartapp.governance.registry import ChangeControl
from tests.conftest import SANDBOX_ISS

from .views_support import fixture_snapshot, launch

#: The launch, the drafted kinds with the governance version, the shown rows with their
#: decisions, the audit event's place in the hash chain, the audit event.
WARM_SUGGESTIONS_BUDGET = 5


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", count)


@contextmanager
def store_sessions(db: Database) -> Iterator[dict[str, int]]:
    """Connections taken from the pool and transactions begun (each checkout of a
    PostgreSQL connection also pings the server; each transaction ends in a COMMIT)."""
    seen = {"checkouts": 0, "transactions": 0}

    def checkout(*_args) -> None:  # noqa: ANN002
        seen["checkouts"] += 1

    def begin(*_args) -> None:  # noqa: ANN002
        seen["transactions"] += 1

    event.listen(db.engine.pool, "checkout", checkout)
    event.listen(db.engine, "begin", begin)
    try:
        yield seen
    finally:
        event.remove(db.engine.pool, "checkout", checkout)
        event.remove(db.engine, "begin", begin)


def _warm(app, client):
    context = launch(app, client)
    db = app.extensions["smartapp.db"]
    SnapshotCache(db, ttl_seconds=600).put(context.session_id, fixture_snapshot())
    first = client.get("/api/suggestions")
    assert first.status_code == 200, first.get_data(as_text=True)
    return db, first.get_json()


def test_warm_suggestions_cost_at_most_five_statements_in_one_store_session(app, client):
    db, first = _warm(app, client)
    assert first["suggestions"], "the fixture chart gives the engines something to draft"
    with statements(db) as seen, store_sessions(db) as sessions:
        again = client.get("/api/suggestions")
    assert again.status_code == 200
    assert [s["id"] for s in again.get_json()["suggestions"]] == [
        s["id"] for s in first["suggestions"]
    ]
    assert len(seen) <= WARM_SUGGESTIONS_BUDGET, "\n".join(seen)
    # Issue 14: one connection and one transaction for the whole request (it was five).
    assert sessions == {"checkouts": 1, "transactions": 1}
    # Issue 12: the store *reads* stay under 5 (the other two write the audit event).
    reads = [s for s in seen if s.lstrip().upper().startswith("SELECT")]
    assert len(reads) <= 3, "\n".join(reads)
    joined = "\n".join(seen)
    # Neither the chart (kept parsed in memory) nor governance's tables (cached) are read.
    for table in ("fhir_snapshot_cache", "rollout_rule", "kill_switch_event", "engine_version"):
        assert f"FROM {table}" not in joined, table


def test_a_kill_switch_reaches_the_next_request_through_the_cache(app, client):
    db, first = _warm(app, client)
    kinds = {s["kind"] for s in first["suggestions"]}
    target = sorted(kinds)[0]
    with db.session() as session:
        ChangeControl(min_grounding_rate=0.9).set_kill_switch(
            session,
            scope="kind",
            target=target,
            engaged=True,
            actor="Practitioner/admin1",
            reason="unsafe output",
            now=datetime.now(UTC),
        )
    after = client.get("/api/suggestions").get_json()
    assert target not in {s["kind"] for s in after["suggestions"]}
    assert target in {n["kind"] for n in after["notEnabled"]}


@responses.activate
def test_context_before_the_chart_reads_the_patient_alone(app, client):
    launch(app, client)
    responses.get(
        f"{SANDBOX_ISS}/Patient/pat-1",
        json={
            "resourceType": "Patient",
            "id": "pat-1",
            "name": [{"given": ["Ada"], "family": "Example"}],
            "gender": "female",
            "birthDate": "1970-01-02",
        },
    )
    body = client.get("/api/context").get_json()
    assert body["patient"]["name"] == "Ada Example"
    assert body["patient"]["gender"] == "female"
    assert body["chart"] is None  # not read yet: /api/suggestions reads it
    assert [c.request.url for c in responses.calls] == [f"{SANDBOX_ISS}/Patient/pat-1"]


def test_context_after_the_chart_costs_one_statement_and_no_ehr_call(app, client):
    db, _ = _warm(app, client)
    with statements(db) as seen, store_sessions(db) as sessions, responses.RequestsMock():
        body = client.get("/api/context").get_json()  # any EHR call would fail
    assert body["chart"]["fetchedAt"]
    assert body["patient"]["id"] == "pat-1"
    assert len(seen) == 1, "\n".join(seen)  # the launch
    assert sessions["checkouts"] == 1
