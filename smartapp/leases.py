"""Leases: work kept in the store (a note to deliver, a feedback forward) held by one process.

A claim names its owner and lasts `LEASE_SECONDS` unless the owner renews it: a heartbeat
every `HEARTBEAT_SECONDS` while the work runs. An owner that dies (kill -9, a lost
machine) stops renewing, so its work is free again within `LEASE_SECONDS`, and a stale
owner can neither renew nor release a claim another process has since taken. Batches are
claimed in one statement; on PostgreSQL its subquery takes the rows `FOR UPDATE SKIP
LOCKED`, so workers claiming at once neither wait on each other nor pick the same rows
(https://www.postgresql.org/docs/current/sql-select.html#SQL-FOR-UPDATE-SHARE). SQLite
serializes writers, and the same conditional UPDATE does the rest there.

A process restarted on the same machine does not wait out its predecessor's leases:
`release_dead` frees, at start-up, the claims of owners on this host whose process is
gone (a pid no longer running, or this very pid under an earlier start: a container's
pid 1 restarted), so a note claimed when the app was killed goes out within seconds.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, select, update

from smartapp.db import Database, utcnow

log = logging.getLogger(__name__)

#: A claim not renewed for this long is free again (a dead owner's work waits no longer).
LEASE_SECONDS = 15.0
#: How often a live owner renews what it holds.
HEARTBEAT_SECONDS = 5.0

_STARTED = uuid.uuid4().hex[:8]


def process_owner() -> str:
    """This process, as a claim names it (the pid is read now: a forked child is another)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{_STARTED}"


def owner_is_gone(owner: str) -> bool:
    """Whether a claim's owner is known to be dead: a process of this host that is no
    longer running. An owner elsewhere (or unreadable) is left to its lease."""
    host, _, rest = owner.rpartition(":")[0].rpartition(":")
    pid_text, started = owner.split(":")[-2:] if owner.count(":") >= 2 else ("", "")
    if host != socket.gethostname()[:80] or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        # This pid under an earlier start (a restarted container's pid 1) is gone; the
        # same start is this process itself.
        return started != _STARTED
    try:
        os.kill(pid, 0)  # signal 0 sends nothing: it asks whether the pid runs
    except ProcessLookupError:
        return True
    except OSError:  # running as another user, or a platform without signal 0
        return False
    return False


class Leases:
    """Claims on one table's rows (`id`, `claimed_by`, `claimed_at`, `claimed_until`)."""

    def __init__(
        self,
        database: Database,
        model: Any,
        *,
        owner: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = database
        self._model = model
        self._owner = owner
        self.lease = timedelta(seconds=lease_seconds)
        self.heartbeat_seconds = heartbeat_seconds
        self._clock = clock

    @property
    def owner(self) -> str:
        return self._owner or process_owner()

    def _free(self, now: datetime) -> ColumnElement[bool]:
        m = self._model
        return m.claimed_until.is_(None) | (m.claimed_until < now)  # type: ignore[no-any-return]

    def claim(self, row_id: str, *, now: datetime | None = None) -> bool:
        """Take one row if nobody holds it (or its holder stopped renewing)."""
        return bool(self.claim_due(self._model.id == row_id, limit=1, now=now))

    def claim_due(
        self,
        where: ColumnElement[bool],
        *,
        order_by: Any = None,
        limit: int = 100,
        now: datetime | None = None,
    ) -> list[str]:
        """Take up to `limit` free rows matching `where`; their ids, in `order_by` order."""
        now = now or self._clock()
        m = self._model
        pick = select(m.id).where(where, self._free(now)).limit(limit)
        if order_by is not None:
            pick = pick.order_by(order_by)
        # Ignored by SQLite; on PostgreSQL rows another worker is claiming are passed over.
        pick = pick.with_for_update(skip_locked=True)
        with self._db.session() as session:
            claimed = session.execute(
                update(m)
                .where(m.id.in_(pick.scalar_subquery()), self._free(now))
                .values(claimed_by=self.owner, claimed_at=now, claimed_until=now + self.lease)
                .returning(m.id)
                .execution_options(synchronize_session=False)
            )
            ids = {row_id for (row_id,) in claimed}
        if order_by is None or len(ids) < 2:
            return list(ids)
        with self._db.session() as session:
            ordered = session.scalars(select(m.id).where(m.id.in_(ids)).order_by(order_by))
            return [i for i in ordered if i in ids]

    def held_elsewhere(self, where: ColumnElement[bool], *, now: datetime | None = None) -> int:
        """How many rows matching `where` another owner holds now (a live lease)."""
        now = now or self._clock()
        m = self._model
        with self._db.session() as session:
            return len(
                session.scalars(
                    select(m.id).where(where, ~self._free(now), m.claimed_by != self.owner)
                ).all()
            )

    def release_dead(self, *, now: datetime | None = None) -> int:
        """Free the claims of owners on this host that are gone (see `owner_is_gone`):
        what a process killed with work in hand held needs no waiting for its lease."""
        now = now or self._clock()
        m = self._model
        with self._db.session() as session:
            owners = set(
                session.scalars(
                    select(m.claimed_by).where(~self._free(now), m.claimed_by.is_not(None))
                )
            )
            dead = [o for o in owners if o != self.owner and owner_is_gone(o)]
            if not dead:
                return 0
            freed = session.execute(
                update(m)
                .where(m.claimed_by.in_(dead))
                .values(claimed_by=None, claimed_at=None, claimed_until=None)
                .execution_options(synchronize_session=False)
            )
            count = int(freed.rowcount)  # type: ignore[attr-defined]
        if count:
            log.info("released %d claim(s) of %d dead process(es) on this host", count, len(dead))
        return count

    def renew(self, ids: Sequence[str], *, now: datetime | None = None) -> int:
        """Extend this owner's claims; how many it still held."""
        if not ids:
            return 0
        now = now or self._clock()
        m = self._model
        with self._db.session() as session:
            renewed = session.execute(
                update(m)
                .where(m.id.in_(list(ids)), m.claimed_by == self.owner, m.claimed_until >= now)
                .values(claimed_until=now + self.lease)
                .execution_options(synchronize_session=False)
            )
            return int(renewed.rowcount)  # type: ignore[attr-defined]

    def release(self, ids: Sequence[str]) -> None:
        """Give back this owner's claims (never another's, taken after ours expired)."""
        if not ids:
            return
        m = self._model
        with self._db.session() as session:
            session.execute(
                update(m)
                .where(m.id.in_(list(ids)), m.claimed_by == self.owner)
                .values(claimed_by=None, claimed_at=None, claimed_until=None)
                .execution_options(synchronize_session=False)
            )

    @contextmanager
    def heartbeat(self, ids: Sequence[str]) -> Iterator[None]:
        """Renew these claims every `heartbeat_seconds` while the block runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_seconds):
                try:
                    self.renew(ids)
                except Exception as exc:  # noqa: BLE001 - the lease then lapses, safely
                    log.warning("lease heartbeat failed: %s", type(exc).__name__)

        thread = threading.Thread(target=beat, name="smartapp-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=self.heartbeat_seconds + 1)
