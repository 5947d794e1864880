"""Unit (real SQLite store): `Database.unit()`, one session and connection for a request's
blocks, each block's outcome the same as when it ran in a session of its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event, inspect, select, update

from smartapp.db import Database
from smartapp.governance.models import GovernanceVersion


@pytest.fixture
def db(tmp_path: Path):
    database = Database(f"sqlite:///{tmp_path / 'unit.db'}")
    database.create_all()
    yield database
    database.dispose()


def _version(db: Database) -> int:
    # Read on a connection of its own: what another process would see now.
    with db.engine.connect() as connection:
        return int(connection.scalar(select(GovernanceVersion.version)) or 0)


def _checkouts(db: Database) -> list[int]:
    seen: list[int] = []
    event.listen(db.engine.pool, "checkout", lambda *_a: seen.append(1))
    return seen


def test_blocks_in_a_unit_share_one_connection(db):
    seen = _checkouts(db)
    with db.unit():
        for _ in range(4):
            with db.session() as session:
                session.scalar(select(GovernanceVersion.version))
    assert len(seen) == 1
    with db.session() as session:  # outside a unit: a session of its own, as before
        session.scalar(select(GovernanceVersion.version))
    assert len(seen) == 2


def test_a_block_that_wrote_is_committed_when_it_ends(db):
    with db.unit():
        with db.session() as session:
            session.execute(update(GovernanceVersion).values(version=7))
        assert _version(db) == 7  # before the unit ends
        with db.session() as session:
            row = session.get(GovernanceVersion, 1)
            assert row is not None
            row.version = 8  # an ORM change: flushed and committed with its block
        assert _version(db) == 8


def test_a_block_that_raises_loses_its_own_writes_only(db):
    with db.unit():
        with db.session() as session:
            session.execute(update(GovernanceVersion).values(version=3))
        with pytest.raises(RuntimeError), db.session() as session:
            session.execute(update(GovernanceVersion).values(version=4))
            raise RuntimeError("the block failed")
        assert _version(db) == 3
        with db.session() as session:  # the unit goes on
            assert session.scalar(select(GovernanceVersion.version)) == 3


def test_what_a_block_loaded_is_detached_as_from_a_closed_session(db):
    with db.unit():
        with db.session() as session:
            row = session.get(GovernanceVersion, 1)
        assert row is not None
        with db.session() as session:
            session.execute(update(GovernanceVersion).values(version=5))
        assert row.version == 0  # what was read, not refreshed under the caller
        assert inspect(row).detached


def test_a_block_inside_a_block_is_its_own_session(db):
    with db.unit(), db.session() as outer:
        outer.scalar(select(GovernanceVersion.version))
        with db.session() as inner:
            assert inner is not outer
            inner.execute(update(GovernanceVersion).values(version=9))
        assert _version(db) == 9


def test_release_gives_the_connection_back_before_a_long_wait(db):
    seen = _checkouts(db)
    returned: list[int] = []
    event.listen(db.engine.pool, "checkin", lambda *_a: returned.append(1))
    with db.unit():
        with db.session() as session:
            session.scalar(select(GovernanceVersion.version))
        db.release()
        assert len(returned) == 1  # nothing held while, say, the EHR is read
        with db.session() as session:
            session.scalar(select(GovernanceVersion.version))
    assert len(seen) == 2 and len(returned) == 2


def test_a_unit_that_raises_rolls_back_and_returns_its_connection(db):
    returned: list[int] = []
    event.listen(db.engine.pool, "checkin", lambda *_a: returned.append(1))
    with pytest.raises(ValueError), db.unit():
        with db.session() as session:
            session.scalar(select(GovernanceVersion.version))
        raise ValueError("the request failed")
    assert returned == [1]


def test_units_of_two_stores_stay_apart(db, tmp_path):
    other = Database(f"sqlite:///{tmp_path / 'other.db'}")
    other.create_all()
    try:
        with db.unit(), db.session() as mine, other.session() as theirs:
            assert mine.get_bind() is not theirs.get_bind()
    finally:
        other.dispose()
