"""Unit (real store: SQLite, and PostgreSQL when SMARTAPP_TEST_DATABASE_URL is set): a claim
is a lease. Its owner renews it while working; when the owner dies the lease lapses and
another process takes the work over; a stale owner can neither renew nor release a claim
taken since; on PostgreSQL a row another worker is claiming is skipped, not waited for."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from smartapp.db import Database
from smartapp.feedback.forwarding import FeedbackForward
from smartapp.leases import LEASE_SECONDS, Leases, process_owner
from smartapp.notes.models import SavedNote
from tests.conftest import test_database_url

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
LEASE = timedelta(seconds=LEASE_SECONDS)


@pytest.fixture
def database(tmp_path):
    db = Database(test_database_url(tmp_path), secret_key="lease-test-secret-key")
    db.drop_all()
    db.upgrade()
    yield db
    db.drop_all()
    db.dispose()


def _note(db: Database, n: int = 1) -> list[str]:
    ids = []
    with db.session() as session:
        for i in range(n):
            note = SavedNote(
                visit_key=f"visit-{i}",
                launch_session_id=f"launch-{i}",
                site="http://ehr.test/fhir",
                patient_id="pat-1",
                fhir_user="Practitioner/1",
                text="A note.",
                status="pending",
                created_at=T0 + timedelta(seconds=i),
            )
            session.add(note)
            session.flush()
            ids.append(note.id)
    return ids


def _holder(db: Database, note_id: str) -> str | None:
    with db.session() as session:
        return session.scalar(select(SavedNote.claimed_by).where(SavedNote.id == note_id))


def test_a_dead_owners_claim_is_taken_over_once_its_lease_lapses(database):
    [note] = _note(database)
    dead = Leases(database, SavedNote, owner="host-a:101:dead")
    alive = Leases(database, SavedNote, owner="host-b:202:alive")
    assert dead.claim(note, now=T0)
    assert not alive.claim(note, now=T0 + LEASE - timedelta(seconds=1))  # still held
    assert alive.claim(note, now=T0 + LEASE + timedelta(seconds=1))  # lapsed: taken over
    assert _holder(database, note) == "host-b:202:alive"
    # The dead owner, were it to wake, can neither renew nor release the new claim.
    assert dead.renew([note], now=T0 + LEASE + timedelta(seconds=2)) == 0
    dead.release([note])
    assert _holder(database, note) == "host-b:202:alive"
    alive.release([note])
    assert _holder(database, note) is None


def test_a_live_owner_keeps_its_claim_by_renewing_it(database):
    [note] = _note(database)
    owner = Leases(database, SavedNote, owner="host-a:101:live")
    other = Leases(database, SavedNote, owner="host-b:202:other")
    assert owner.claim(note, now=T0)
    assert owner.renew([note], now=T0 + LEASE / 2) == 1  # the heartbeat
    assert not other.claim(note, now=T0 + LEASE + timedelta(seconds=1))
    assert other.claim(note, now=T0 + LEASE / 2 + LEASE + timedelta(seconds=1))


def test_a_batch_is_claimed_once_across_workers_in_order(database):
    notes = _note(database, 5)
    first = Leases(database, SavedNote, owner="w1")
    second = Leases(database, SavedNote, owner="w2")
    due = SavedNote.status == "pending"
    got_first = first.claim_due(due, order_by=SavedNote.created_at, limit=3, now=T0)
    got_second = second.claim_due(due, order_by=SavedNote.created_at, limit=3, now=T0)
    assert got_first == notes[:3]
    assert got_second == notes[3:]


def test_feedback_forwards_are_leased_too(database):
    leases = Leases(database, FeedbackForward, owner="w1")
    assert leases.claim_due(FeedbackForward.status == "pending", now=T0) == []


def test_the_owner_names_the_host_and_process():
    import os
    import socket

    host, pid, _ = process_owner().rsplit(":", 2)
    assert host == socket.gethostname()[:80] and pid == str(os.getpid())


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_dead_process_of_this_host_has_its_claims_released_at_once(database):
    import socket

    host = socket.gethostname()[:80]
    notes = _note(database, 3)
    killed = Leases(database, SavedNote, owner=f"{host}:{_dead_pid()}:killed")
    assert len(killed.claim_due(SavedNote.status == "pending", limit=2)) == 2
    restarted = Leases(database, SavedNote)
    assert restarted.held_elsewhere(SavedNote.status == "pending") == 2
    # Well within the dead owner's lease: no waiting for it to lapse.
    assert restarted.release_dead() == 2
    assert [_holder(database, n) for n in notes] == [None, None, None]
    assert restarted.held_elsewhere(SavedNote.status == "pending") == 0


def test_a_live_process_or_another_hosts_keeps_its_claims(database):
    import os
    import socket

    host = socket.gethostname()[:80]
    notes = _note(database, 4)
    owners = [
        f"{host}:{os.getppid()}:alive",  # a live process of this host (pytest's parent)
        f"another-host:{_dead_pid()}:elsewhere",  # its pids mean nothing here
        process_owner(),  # this very process
        "not-an-owner-name",
    ]
    for note, owner in zip(notes, owners, strict=True):
        assert Leases(database, SavedNote, owner=owner).claim(note)
    assert Leases(database, SavedNote, owner="restarted").release_dead() == 0
    assert [_holder(database, n) for n in notes] == owners


def test_this_pid_under_an_earlier_start_is_a_dead_owner(database):
    """A container's process restarted with the same pid (1) is not its predecessor."""
    import os
    import socket

    [note] = _note(database)
    earlier = f"{socket.gethostname()[:80]}:{os.getpid()}:earlier-start"
    assert Leases(database, SavedNote, owner=earlier).claim(note)
    assert Leases(database, SavedNote).release_dead() == 1
    assert _holder(database, note) is None


@pytest.mark.postgres
def test_postgres_skips_rows_another_worker_is_claiming(database):
    if not database.url.startswith("postgresql"):
        pytest.skip("SMARTAPP_TEST_DATABASE_URL is not a PostgreSQL URL")
    locked, free = _note(database, 2)
    worker = Leases(database, SavedNote, owner="w2")
    with database.engine.connect() as other:
        transaction = other.begin()
        # Another worker is in the middle of claiming the first note (its row is locked).
        other.execute(
            text("SELECT id FROM saved_note WHERE id = :id FOR UPDATE"), {"id": locked}
        )
        result: list[list[str]] = []
        claiming = threading.Thread(
            target=lambda: result.append(
                worker.claim_due(SavedNote.status == "pending", limit=2, now=T0)
            )
        )
        claiming.start()
        claiming.join(30)
        finished = not claiming.is_alive()
        transaction.rollback()
    claiming.join(30)
    assert finished, "the claim waited on a locked row instead of skipping it"
    assert result == [[free]]


class _Sidebar:
    """What the outbox needs of the sidebar service: its note leases, and delivery."""

    def __init__(self, leases: Leases) -> None:
        self.leases = leases
        self.delivered: list[str] = []

    def deliver(self, note_id: str, *, client: object, claimed: bool = False) -> object:
        assert claimed  # the outbox claimed it
        self.delivered.append(note_id)
        self.leases.release([note_id])
        return object()


class _Clients:
    def client_for_note(self, **_: object) -> object:
        return object()


def test_the_outbox_takes_over_a_note_whose_owner_died(database):
    from smartapp.notes.outbox import Outbox

    [note] = _note(database)
    assert Leases(database, SavedNote, owner="host-a:101:killed").claim(note, now=T0)
    sidebar = _Sidebar(Leases(database, SavedNote, owner="host-b:202:restarted"))
    outbox = Outbox(database=database, sidebar=sidebar, clients=_Clients())  # type: ignore[arg-type]
    early = outbox.run_once(now=T0 + timedelta(seconds=1))
    assert early.notes_delivered == 0 and sidebar.delivered == []  # its owner may be alive
    late = outbox.run_once(now=T0 + LEASE + timedelta(seconds=1))
    assert late.notes_delivered == 1 and sidebar.delivered == [note]
    assert _holder(database, note) is None
