"""A per-launch, server-side cache of the chart snapshot, with a time to live.

https://docs.sqlalchemy.org/en/20/orm/quickstart.html

The cached snapshot is PHI. It lives only in the app's server-side store (the
`fhir_snapshot_cache` table), keyed by the opaque launch session id; it is never put in
a cookie or sent to the browser whole. It is deleted when it expires: `get` deletes an
expired row it comes across, and `purge_expired()` deletes all the others (call it
periodically, and at start-up). The sidebar's refresh action calls `invalidate` and then
loads the chart again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, String, Text, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from smartapp.db import Base, Database, UTCDateTime, utcnow
from smartapp.fhir.snapshot import ChartSnapshot

log = logging.getLogger(__name__)


class CachedSnapshot(Base):
    __tablename__ = "fhir_snapshot_cache"

    launch_session_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: `ChartSnapshot.to_json()`, serialized: PHI, see the module docstring.
    data: Mapped[str] = mapped_column(Text)
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class SnapshotCache:
    """Snapshots by launch session, each kept `ttl_seconds` after it was stored."""

    def __init__(
        self,
        database: Database,
        *,
        ttl_seconds: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._db = database
        self._ttl = timedelta(seconds=ttl_seconds)
        self._clock = clock

    def get(self, launch_session_id: str) -> ChartSnapshot | None:
        """The cached snapshot, or None if there is none or it has expired (it is then deleted)."""
        now = self._clock()
        with self._db.session() as session:
            row = session.get(CachedSnapshot, launch_session_id)
            if row is None:
                return None
            if row.expires_at <= now:
                session.delete(row)
                return None
            data = row.data
        try:
            return ChartSnapshot.from_json(json.loads(data))
        except (ValueError, KeyError, TypeError):
            # Written by an older version, or damaged: read the chart again instead.
            log.warning("cached chart snapshot unreadable; dropping it")
            self.invalidate(launch_session_id)
            return None

    def put(self, launch_session_id: str, snapshot: ChartSnapshot) -> None:
        """Store (or replace) the launch's snapshot for `ttl_seconds` from now."""
        now = self._clock()
        values = {
            "launch_session_id": launch_session_id,
            "data": json.dumps(snapshot.to_json(), separators=(",", ":")),
            "stored_at": now,
            "expires_at": now + self._ttl,
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

    def get_or_load(
        self,
        launch_session_id: str,
        load: Callable[[], ChartSnapshot],
        *,
        refresh: bool = False,
    ) -> ChartSnapshot:
        """The cached snapshot, else `load()`'s (then cached). `refresh=True` always loads:
        the sidebar's refresh action."""
        if refresh:
            self.invalidate(launch_session_id)
        else:
            cached = self.get(launch_session_id)
            if cached is not None:
                return cached
        snapshot = load()
        self.put(launch_session_id, snapshot)
        return snapshot

    def invalidate(self, launch_session_id: str) -> None:
        with self._db.session() as session:
            session.execute(
                delete(CachedSnapshot).where(CachedSnapshot.launch_session_id == launch_session_id)
            )

    def purge_expired(self) -> int:
        """Delete every expired snapshot; returns how many were deleted."""
        now = self._clock()
        with self._db.session() as session:
            result = cast(
                CursorResult[Any],
                session.execute(delete(CachedSnapshot).where(CachedSnapshot.expires_at <= now)),
            )
            return result.rowcount
