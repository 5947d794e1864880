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
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, String, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from smartapp.atrest import DecryptionFailed
from smartapp.db import Base, Database, EncryptedText, UTCDateTime, utcnow
from smartapp.fhir.client import decode_json
from smartapp.fhir.snapshot import ChartSnapshot

log = logging.getLogger(__name__)


class CachedSnapshot(Base):
    __tablename__ = "fhir_snapshot_cache"

    launch_session_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: `ChartSnapshot.to_json()`, serialized: PHI, encrypted at rest (see the module docstring).
    data: Mapped[str] = mapped_column(EncryptedText())
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


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
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._db = database
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
        if refresh:
            self.invalidate(launch_session_id)
        else:
            cached = self.get(launch_session_id, reread=reread)
            if cached is not None:
                return cached
        # The EHR read takes seconds: a request's store connection is not held meanwhile.
        self._db.release()
        snapshot = load()
        self.put(launch_session_id, snapshot)
        return snapshot

    def invalidate(self, launch_session_id: str) -> None:
        self._forget(launch_session_id)
        with self._db.session() as session:
            session.execute(
                delete(CachedSnapshot).where(CachedSnapshot.launch_session_id == launch_session_id)
            )

    def purge_expired(self) -> int:
        """Delete every expired snapshot; returns how many were deleted."""
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
