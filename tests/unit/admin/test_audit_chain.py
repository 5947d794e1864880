"""Unit (SQLite and PostgreSQL): the audit trail is a hash chain; a removed or altered row is
found by `verify` even when whoever did it dropped the append-only triggers first
(issue 11, finding 8)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from sqlalchemy import select, text

from smartapp.audit import Action, record
from smartapp.audit.chain import verify
from smartapp.audit.log import GroupAppender
from smartapp.audit.models import GENESIS, AuditEvent
from smartapp.cli import main
from smartapp.db import Database

SITE = "http://ehr.test/fhir"


def _write(database: Database, count: int, *, actor: str = "Practitioner/1") -> None:
    for i in range(count):
        record(
            database,
            actor=actor,
            action=Action.CHART_READ,
            site=SITE,
            patient=f"p{i}",
            detail={"resources": i, "ratio": 0.1 * i},
        )


def _drop_triggers(database: Database) -> None:
    """What an attacker with the app's database user can do."""
    with database.engine.begin() as conn:
        if database.engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER audit_event_no_update"))
            conn.execute(text("DROP TRIGGER audit_event_no_delete"))
        else:
            conn.execute(text("DROP TRIGGER audit_event_no_change ON audit_event"))


def _verify(database: Database):  # type: ignore[no-untyped-def]
    with database.session() as s:
        return verify(s)


def test_each_row_carries_the_seal_of_the_one_before(database):
    _write(database, 4)
    with database.session() as s:
        rows = list(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    assert rows[0].prev_hash == GENESIS
    assert [r.prev_hash for r in rows[1:]] == [r.hash for r in rows[:-1]]
    report = _verify(database)
    assert report.intact and report.rows == 4 and report.head_seq == 4
    assert report.head_hash == rows[-1].hash


def test_a_deleted_row_is_the_first_break(database):
    _write(database, 5)
    _drop_triggers(database)
    with database.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_event WHERE seq = 3"))
    report = _verify(database)
    assert not report.intact
    assert report.first_break is not None
    assert report.first_break[0] == 3
    assert "row 3 is missing" in report.first_break[2]


def test_an_altered_row_is_the_first_break(database):
    _write(database, 5)
    with database.session() as s:
        target = s.scalars(select(AuditEvent).where(AuditEvent.seq == 2)).one().id
    _drop_triggers(database)
    with database.engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_event SET actor = 'Practitioner/someone-else' WHERE id = :id"),
            {"id": target},
        )
    report = _verify(database)
    assert report.first_break == (2, target, "row 2 was altered (its seal does not match)")


def test_a_trimmed_tail_is_detected(database):
    _write(database, 3)
    _drop_triggers(database)
    with database.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_event WHERE seq = 3"))
    report = _verify(database)
    assert report.first_break is not None
    assert "rows 3..3 are missing" in report.first_break[2]


def test_a_row_rewritten_with_a_recomputed_hash_needs_the_key(database):
    """Recomputing the chain without the app's key does not pass verification."""
    _write(database, 2)
    _drop_triggers(database)
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE audit_event SET hash = :h WHERE seq = 2"), {"h": "f" * 64})
        conn.execute(text("UPDATE audit_chain SET hash = :h"), {"h": "f" * 64})
    assert _verify(database).first_break == (
        2,
        _id_at(database, 2),
        "row 2 was altered (its seal does not match)",
    )


def _id_at(database: Database, seq: int) -> str:
    with database.session() as s:
        return s.scalars(select(AuditEvent.id).where(AuditEvent.seq == seq)).one()


def test_a_row_added_outside_the_chain_is_detected(database):
    _write(database, 2)
    with database.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO audit_event (id, recorded, action, outcome, detail) "
                "VALUES ('forged', CURRENT_TIMESTAMP, 'launch', 'success', '{}')"
            )
        )
    report = _verify(database)
    assert report.first_break is not None
    assert "rows without a seal were added" in report.first_break[2]


def test_concurrent_writers_never_fork_the_chain(database):
    """Two threads appending at once (PostgreSQL: real row locks) keep one chain."""
    errors: list[BaseException] = []

    def writer(actor: str) -> None:
        try:
            _write(database, 15, actor=actor)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"Practitioner/{n}",)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    report = _verify(database)
    assert report.intact and report.rows == 30


def test_eight_writers_at_once_keep_one_chain_with_every_event(database):
    """Writers of one process share batches (group commit): every event is in, in one
    unbroken chain, each thread's own in the order it wrote them."""
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            _write(database, 10, actor=f"Practitioner/{n}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    report = _verify(database)
    assert report.intact and report.rows == 80 and report.head_seq == 80
    with database.session() as s:
        rows = list(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
    for n in range(8):
        mine = [r.patient for r in rows if r.actor == f"Practitioner/{n}"]
        assert mine == [f"Patient/p{i}" for i in range(10)]


def _event(n: int) -> AuditEvent:
    return AuditEvent(action=Action.CHART_READ, actor=f"Practitioner/{n}", detail={})


def test_events_arriving_during_a_write_go_in_the_next_batch_together():
    batches: list[list[str | None]] = []
    writing, release = threading.Event(), threading.Event()

    def write(events: list[AuditEvent]) -> None:
        batches.append([e.actor for e in events])
        if len(batches) == 1:
            writing.set()
            assert release.wait(10)

    appender = GroupAppender(write)
    first = threading.Thread(target=appender.append, args=(_event(0),))
    first.start()
    assert writing.wait(10)
    others = [threading.Thread(target=appender.append, args=(_event(n),)) for n in (1, 2, 3)]
    for t in others:
        t.start()
    while len(appender._queue) < 3:  # all three queued behind the first write
        threading.Event().wait(0.001)
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert batches[0] == ["Practitioner/0"]
    assert len(batches) == 2 and sorted(batches[1]) == [f"Practitioner/{n}" for n in (1, 2, 3)]


def test_a_failed_batch_raises_in_every_caller_of_it_and_the_next_one_writes():
    calls: list[int] = []
    writing, release = threading.Event(), threading.Event()

    def write(events: list[AuditEvent]) -> None:
        calls.append(len(events))
        if len(calls) == 1:
            writing.set()
            assert release.wait(10)
        elif len(calls) == 2:
            raise OSError("store unavailable")

    appender = GroupAppender(write)
    raised: list[BaseException | None] = []

    def append(n: int) -> None:
        try:
            appender.append(_event(n))
            raised.append(None)
        except OSError as exc:
            raised.append(exc)

    first = threading.Thread(target=append, args=(0,))
    first.start()
    assert writing.wait(10)
    others = [threading.Thread(target=append, args=(n,)) for n in (1, 2)]
    for t in others:
        t.start()
    while len(appender._queue) < 2:
        threading.Event().wait(0.001)
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert calls == [1, 2]
    assert raised.count(None) == 1 and sum(isinstance(r, OSError) for r in raised) == 2
    appender.append(_event(9))  # nothing left stuck: the next event writes
    assert calls == [1, 2, 1]


def test_cli_verify_reports_the_first_break(tmp_path: Path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("SMARTAPP_INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("SMARTAPP_DATABASE_URL", url)
    monkeypatch.setenv("SMARTAPP_SECRET_KEY", "cli-test-secret-key-0123456789")
    monkeypatch.chdir(tmp_path)  # no .env from the repository
    database = Database(url, secret_key="cli-test-secret-key-0123456789")
    try:
        database.upgrade()
        _write(database, 3)
        assert main(["audit", "verify"]) == 0
        assert "audit chain intact: 3 sealed rows" in capsys.readouterr().out
        _drop_triggers(database)
        with database.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_event WHERE seq = 2"))
        assert main(["audit", "verify", "--json"]) == 1
        report = json.loads(capsys.readouterr().out)
        assert report["intact"] is False
        assert report["firstBreak"]["seq"] == 2
    finally:
        database.dispose()


def test_verify_needs_the_key_the_rows_were_sealed_with(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    old = Database(url, secret_key="old-key-0123456789")
    old.create_all()
    _write(old, 2)
    old.dispose()
    rotated = Database(url, secret_key="new-key-0123456789", previous_keys=("old-key-0123456789",))
    wrong = Database(url, secret_key="new-key-0123456789")
    try:
        _write(rotated, 1)
        assert _verify(rotated).intact
        assert _verify(wrong).first_break == (
            1,
            _id_at(wrong, 1),
            "row 1 was altered (its seal does not match)",
        )
    finally:
        rotated.dispose()
        wrong.dispose()
