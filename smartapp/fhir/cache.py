"""A per-launch, server-side cache of the chart snapshot, with a time to live.

https://docs.sqlalchemy.org/en/20/orm/quickstart.html

The cached snapshot is PHI. It lives only in the app's server-side store (the
`fhir_snapshot_cache` table), keyed by the opaque launch session id; it is never put in
a cookie or sent to the browser whole. It is deleted when it expires: `get` deletes an
expired row it comes across, and `purge_expired()` deletes all the others (call it
periodically, and at start-up). The sidebar's refresh action calls `invalidate` and then
loads the chart again.

Each process also keeps the parsed snapshots it stored or read in memory (bounded, and
never past their expiry), so a launch's later requests neither read the row nor parse
it again. A process learns that another one refreshed the chart from the launch's newer
drafts (`SidebarService`), and then reads the row with `reread=True`.

A read of a launch's chart from the EHR (read ahead at the callback, or a request's) is
announced in the store while it runs (`ChartReads`: a `chart_read` row naming the reading
process, renewed every few seconds, deleted when the snapshot is stored), so that another
process serving the same launch waits for that snapshot rather than reading the chart a
second time beside it; it waits at most `wait_seconds`, and not at all once the reader's
lease has lapsed (the reader died) or its process is known gone.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, String, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from smartapp.atrest import DecryptionFailed
from smartapp.db import Base, Database, EncryptedText, UTCDateTime, utcnow
from smartapp.fhir.client import decode_json
from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.leases import owner_is_gone, process_owner

log = logging.getLogger(__name__)


class CachedSnapshot(Base):
    __tablename__ = "fhir_snapshot_cache"

    launch_session_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: `ChartSnapshot.to_json()`, serialized: PHI, encrypted at rest (see the module docstring).
    data: Mapped[str] = mapped_column(EncryptedText())
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class ChartRead(Base):
    """A launch's chart being read from the EHR now, and by whom (see the module docstring)."""

    __tablename__ = "chart_read"

    launch_session_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: The reading process (`leases.process_owner()`): on its own host, a dead one is seen.
    claimed_by: Mapped[str] = mapped_column(String(160))
    #: The reader within that process (one `ChartReads`: a process may hold several apps).
    reader: Mapped[str] = mapped_column(String(32))
    #: The lease: renewed while the read runs; past it, the read is taken for dead.
    claimed_until: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class ChartReads:
    """Announces this process's chart reads in the store, and sees other processes' own.

    `claim` takes a launch's read (one statement: an upsert that takes a lapsed lease
    too), `heartbeat` renews it while the EHR is read, `release` ends it once the snapshot
    is stored. `wait_for` is what a process that finds no snapshot does first: while
    another live reader holds the launch's read it looks for that reader's snapshot every
    `poll_seconds`, for at most `wait_seconds`."""

    #: A read not renewed for this long is taken for dead (its process was killed).
    LEASE_SECONDS = 15.0
    HEARTBEAT_SECONDS = 5.0
    POLL_SECONDS = 0.1

    def __init__(
        self,
        database: Database,
        *,
        wait_seconds: float,
        owner: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        poll_seconds: float = POLL_SECONDS,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        pause: Callable[[float], object] | None = None,
    ) -> None:
        self._db = database
        self.wait_seconds = wait_seconds
        self._owner = owner
        self.reader = uuid.uuid4().hex
        self._lease = timedelta(seconds=lease_seconds)
        self._heartbeat = heartbeat_seconds
        self._poll = poll_seconds
        self._clock = clock
        self._monotonic = monotonic
        self._pause = pause or threading.Event().wait

    @property
    def owner(self) -> str:
        return self._owner or process_owner()

    def claim(self, launch_session_id: str) -> bool:
        """Take the launch's read unless another live reader holds it."""
        now = self._clock()
        values = {
            "launch_session_id": launch_session_id,
            "claimed_by": self.owner,
            "reader": self.reader,
            "claimed_until": now + self._lease,
        }
        dialect = self._db.engine.dialect.name
        table = ChartRead.__table__
        if dialect in ("postgresql", "sqlite"):
            upsert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            statement = upsert(ChartRead).values(**values)
            with self._db.session() as session:
                taken = session.execute(
                    statement.on_conflict_do_update(
                        index_elements=[table.c.launch_session_id],
                        set_={k: statement.excluded[k] for k in values if k != "launch_session_id"},
                        where=(table.c.claimed_until < now) | (table.c.reader == self.reader),
                    ).returning(table.c.reader)
                ).first()
            if taken is not None:
                return True
        else:
            try:
                with self._db.session() as session:
                    session.execute(insert(ChartRead).values(**values))
                return True
            except IntegrityError:
                pass
        holder = self._holder(launch_session_id)
        if holder is None or owner_is_gone(holder.claimed_by):
            return self._take_over(launch_session_id, holder, values)
        return False

    def _holder(self, launch_session_id: str) -> ChartRead | None:
        with self._db.session() as session:
            return session.get(ChartRead, launch_session_id)

    def _take_over(
        self, launch_session_id: str, holder: ChartRead | None, values: dict[str, Any]
    ) -> bool:
        """The read of a lapsed or dead reader (`holder`, as last seen), unless another took
        it meanwhile; a row gone meanwhile is taken afresh."""
        if holder is None:
            try:
                with self._db.session() as session:
                    session.execute(insert(ChartRead).values(**values))
                return True
            except IntegrityError:
                return False
        with self._db.session() as session:
            result = session.execute(
                update(ChartRead)
                .where(
                    ChartRead.launch_session_id == launch_session_id,
                    ChartRead.reader == holder.reader,
                    ChartRead.claimed_until == holder.claimed_until,
                )
                .values(
                    claimed_by=values["claimed_by"],
                    reader=values["reader"],
                    claimed_until=values["claimed_until"],
                )
                .execution_options(synchronize_session=False)
            )
            return bool(getattr(result, "rowcount", 0))

    def held_elsewhere(self, launch_session_id: str) -> bool:
        """Whether another reader, alive as far as can be told, is reading the chart now."""
        now = self._clock()
        with self._db.session() as session:
            row = session.execute(
                select(ChartRead.claimed_by).where(
                    ChartRead.launch_session_id == launch_session_id,
                    ChartRead.claimed_until >= now,
                    ChartRead.reader != self.reader,
                )
            ).first()
        return row is not None and not owner_is_gone(row.claimed_by)

    def renew(self, launch_session_id: str) -> bool:
        with self._db.session() as session:
            result = session.execute(
                update(ChartRead)
                .where(
                    ChartRead.launch_session_id == launch_session_id,
                    ChartRead.reader == self.reader,
                )
                .values(claimed_until=self._clock() + self._lease)
                .execution_options(synchronize_session=False)
            )
            return bool(getattr(result, "rowcount", 0))

    def release(self, launch_session_id: str) -> None:
        """End this reader's read (never another's, taken after this one lapsed)."""
        with self._db.session() as session:
            session.execute(
                delete(ChartRead).where(
                    ChartRead.launch_session_id == launch_session_id,
                    ChartRead.reader == self.reader,
                )
            )

    @contextmanager
    def heartbeat(self, launch_session_id: str) -> Iterator[None]:
        """Renew the read every `heartbeat_seconds` while the block runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self._heartbeat):
                try:
                    self.renew(launch_session_id)
                except Exception as exc:  # noqa: BLE001 - the lease then lapses: others read
                    log.warning("chart read heartbeat failed: %s", type(exc).__name__)

        thread = threading.Thread(target=beat, name="smartapp-chart-read", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=self._heartbeat + 1)

    def wait_for(
        self, launch_session_id: str, look: Callable[[], ChartSnapshot | None]
    ) -> ChartSnapshot | None:
        """Another live reader's snapshot of this launch (`look()` finds it in the store),
        once it is stored; None at once when nobody else reads it, and None when the
        reader stopped (its lease lapsed, or it released without storing one) or
        `wait_seconds` passed: the caller then reads the chart itself."""
        if self.wait_seconds <= 0 or not self.held_elsewhere(launch_session_id):
            return None
        deadline = self._monotonic() + self.wait_seconds
        while True:
            # Hold no store connection between looks (a request's unit would keep one).
            self._db.release()
            self._pause(self._poll)
            snapshot = look()
            if snapshot is not None:
                return snapshot
            if not self.held_elsewhere(launch_session_id):
                # Stored just before the read ended? Then it is there now.
                return look()
            if self._monotonic() >= deadline:
                log.warning(
                    "another process's chart read did not finish in %.0f s: reading it here",
                    self.wait_seconds,
                )
                return None

    def purge_expired(self) -> int:
        """Delete the reads whose lease lapsed long ago (their reader died)."""
        with self._db.session() as session:
            result = cast(
                CursorResult[Any],
                session.execute(
                    delete(ChartRead).where(ChartRead.claimed_until < self._clock() - self._lease)
                ),
            )
            return result.rowcount


class SnapshotCache:
    """Snapshots by launch session, each kept `ttl_seconds` after it was stored."""

    #: Parsed snapshots kept in this process's memory (the least recently used go first).
    MEMORY_ENTRIES = 256

    def __init__(
        self,
        database: Database,
        *,
        ttl_seconds: int,
        clock: Callable[[], datetime] = utcnow,
        memory_entries: int = MEMORY_ENTRIES,
        reads: ChartReads | None = None,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._db = database
        #: Chart reads announced across processes (None: this process alone reads charts).
        self.reads = reads
        self._ttl = timedelta(seconds=ttl_seconds)
        self._clock = clock
        self._memory: OrderedDict[str, tuple[datetime, ChartSnapshot]] = OrderedDict()
        self._memory_entries = memory_entries
        self._lock = threading.Lock()

    def _remember(
        self, launch_session_id: str, expires_at: datetime, snapshot: ChartSnapshot
    ) -> None:
        if self._memory_entries <= 0:
            return
        with self._lock:
            self._memory[launch_session_id] = (expires_at, snapshot)
            self._memory.move_to_end(launch_session_id)
            while len(self._memory) > self._memory_entries:
                self._memory.popitem(last=False)

    def _forget(self, launch_session_id: str) -> None:
        with self._lock:
            self._memory.pop(launch_session_id, None)

    def _recalled(self, launch_session_id: str, now: datetime) -> ChartSnapshot | None:
        with self._lock:
            entry = self._memory.get(launch_session_id)
            if entry is None:
                return None
            if entry[0] <= now:
                del self._memory[launch_session_id]
                return None
            self._memory.move_to_end(launch_session_id)
            return entry[1]

    def get(self, launch_session_id: str, *, reread: bool = False) -> ChartSnapshot | None:
        """The cached snapshot, or None if there is none or it has expired (it is then deleted).

        From this process's memory when it holds it, unless `reread`: then from the store.
        """
        now = self._clock()
        if not reread:
            recalled = self._recalled(launch_session_id, now)
            if recalled is not None:
                return recalled
        self._forget(launch_session_id)
        try:
            with self._db.session() as session:
                row = session.get(CachedSnapshot, launch_session_id)
                if row is None:
                    return None
                if row.expires_at <= now:
                    session.delete(row)
                    return None
                data, expires_at = row.data, row.expires_at
        except DecryptionFailed:
            # Encrypted under a key no longer configured (rotated out): read the chart again.
            log.warning("cached chart snapshot not readable with the configured keys; dropping it")
            self.invalidate(launch_session_id)
            return None
        try:
            snapshot = ChartSnapshot.from_json(decode_json(data))
        except (ValueError, KeyError, TypeError):
            # Written by an older version, or damaged: read the chart again instead.
            log.warning("cached chart snapshot unreadable; dropping it")
            self.invalidate(launch_session_id)
            return None
        self._remember(launch_session_id, expires_at, snapshot)
        return snapshot

    def put(self, launch_session_id: str, snapshot: ChartSnapshot) -> None:
        """Store (or replace) the launch's snapshot for `ttl_seconds` from now."""
        now = self._clock()
        expires_at = now + self._ttl
        values = {
            "launch_session_id": launch_session_id,
            "data": json.dumps(snapshot.to_json(), separators=(",", ":")),
            "stored_at": now,
            "expires_at": expires_at,
        }
        dialect = self._db.engine.dialect.name
        with self._db.session() as session:
            if dialect in ("postgresql", "sqlite"):
                # An upsert: two requests of one launch may load the chart at the same time.
                insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
                statement = insert(CachedSnapshot).values(**values)
                session.execute(
                    statement.on_conflict_do_update(
                        index_elements=[CachedSnapshot.launch_session_id],
                        set_={
                            k: statement.excluded[k] for k in ("data", "stored_at", "expires_at")
                        },
                    )
                )
            else:
                session.merge(CachedSnapshot(**values))
        self._remember(launch_session_id, expires_at, snapshot)

    def get_or_load(
        self,
        launch_session_id: str,
        load: Callable[[], ChartSnapshot],
        *,
        refresh: bool = False,
        reread: bool = False,
    ) -> ChartSnapshot:
        """The cached snapshot, else `load()`'s (then cached). `refresh=True` always loads:
        the sidebar's refresh action. `reread=True` skips this process's memory."""
        reads = self.reads
        if refresh:
            self.invalidate(launch_session_id)
        else:
            cached = self.get(launch_session_id, reread=reread)
            if cached is not None:
                return cached
            if reads is not None:
                # Another process reading this launch's chart now: its snapshot, not a
                # second read beside it.
                waited = reads.wait_for(
                    launch_session_id, lambda: self.get(launch_session_id, reread=True)
                )
                if waited is not None:
                    return waited
        claimed = reads is not None and reads.claim(launch_session_id)
        # The EHR read takes seconds: a request's store connection is not held meanwhile.
        self._db.release()
        try:
            with reads.heartbeat(launch_session_id) if reads and claimed else nullcontext():
                snapshot = load()
            # Stored before the read is released: whoever waits on it finds it.
            self.put(launch_session_id, snapshot)
        finally:
            if reads is not None and claimed:
                try:
                    reads.release(launch_session_id)
                except Exception as exc:  # noqa: BLE001 - its lease lapses instead
                    log.warning("ending a chart read failed: %s", type(exc).__name__)
        return snapshot

    def invalidate(self, launch_session_id: str) -> None:
        self._forget(launch_session_id)
        with self._db.session() as session:
            session.execute(
                delete(CachedSnapshot).where(CachedSnapshot.launch_session_id == launch_session_id)
            )

    def purge_expired(self) -> int:
        """Delete every expired snapshot (and chart reads long lapsed); how many snapshots."""
        if self.reads is not None:
            self.reads.purge_expired()
        now = self._clock()
        with self._lock:
            for key in [k for k, (expires, _) in self._memory.items() if expires <= now]:
                del self._memory[key]
        with self._db.session() as session:
            result = cast(
                CursorResult[Any],
                session.execute(delete(CachedSnapshot).where(CachedSnapshot.expires_at <= now)),
            )
            return result.rowcount
