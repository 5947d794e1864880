"""The sandbox EHR's persistence: FHIR resources and OAuth state in one SQLite file.

One connection guarded by a re-entrant lock: the sandbox serves a handful of users, and a
single writer keeps transactions (https://hl7.org/fhir/R4/http.html#transaction)
all-or-nothing without any cross-connection locking surprises.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

Resource = dict[str, Any]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    patient TEXT,
    version INTEGER NOT NULL,
    last_updated TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (type, id)
);
CREATE INDEX IF NOT EXISTS ix_resources_patient ON resources (type, patient);
CREATE TABLE IF NOT EXISTS launches (
    id TEXT PRIMARY KEY,
    client_id TEXT,
    patient TEXT,
    encounter TEXT,
    user TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS codes (
    code TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    scope TEXT NOT NULL,
    user TEXT NOT NULL,
    patient TEXT,
    encounter TEXT,
    launch_type TEXT NOT NULL,
    nonce TEXT,
    code_challenge TEXT,
    code_challenge_method TEXT,
    auth_time INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tokens (
    access_token TEXT PRIMARY KEY,
    refresh_token TEXT UNIQUE,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    user TEXT NOT NULL,
    patient TEXT,
    encounter TEXT,
    launch_type TEXT NOT NULL,
    code TEXT,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    refresh_expires_at REAL,
    access_revoked INTEGER NOT NULL DEFAULT 0,
    refresh_revoked INTEGER NOT NULL DEFAULT 0
);
"""


def now_instant() -> str:
    """A FHIR `instant` for meta.lastUpdated, to the millisecond, in UTC."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class StoredResource:
    resource_type: str
    id: str
    patient: str | None
    version: int
    last_updated: str
    body: Resource
    #: What searches worked out from `body` (a clause's verdict, the sort date), shared by
    #: every search that lists this version of it and dropped with it when its text
    #: changes: the sandbox's stand-in for a real EHR's search indexes.
    derived: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


class Store:
    """Resources (current version only) plus launches, codes and tokens."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._depth = 0
        #: Listed resources by (type, id), with the text they were decoded from: a search
        #: reads every resource of the patient's type, and decoding them again on every
        #: page made a page of a 5,000-Observation chart cost 0.4 s (a real EHR's indexed
        #: search costs what its page holds). Reused only while the stored text is the same.
        self._decoded: dict[tuple[str, str], tuple[str, StoredResource]] = {}
        #: Each list of a type (and patient) as last read, with the store's state then:
        #: this connection's count of writes and SQLite's data_version, which changes when
        #: another connection commits. The same search asked again reads no rows.
        self._lists: dict[tuple[str, str | None], tuple[tuple[int, int], list[StoredResource]]]
        self._lists = {}
        self._writes = 0
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together or not at all; nested calls join the outer one."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._conn.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if outer:
                    self._conn.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                self._conn.execute("COMMIT")

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> None:
        with self._lock:
            self._conn.execute(sql, tuple(params))

    def _all(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        # Fetch under the lock: the connection is shared, and another thread's open
        # transaction must not interleave with this read.
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def _one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._conn.execute(sql, tuple(params)).fetchone()
            return row

    # -- meta ---------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        self._execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- resources ----------------------------------------------------------------------
    @staticmethod
    def _row(
        row: sqlite3.Row,
        body: dict[str, Any] | None = None,
        derived: dict[Any, Any] | None = None,
    ) -> StoredResource:
        """The stored resource; its body decoded afresh unless one is given."""
        return StoredResource(
            resource_type=row["type"],
            id=row["id"],
            patient=row["patient"],
            version=row["version"],
            last_updated=row["last_updated"],
            body=json.loads(row["body"]) if body is None else body,
            derived={} if derived is None else derived,
        )

    def get(self, resource_type: str, resource_id: str) -> StoredResource | None:
        row = self._one(
            "SELECT * FROM resources WHERE type = ? AND id = ?", (resource_type, resource_id)
        )
        return None if row is None else self._row(row)

    def exists(self, resource_type: str, resource_id: str) -> bool:
        row = self._one(
            "SELECT 1 FROM resources WHERE type = ? AND id = ?", (resource_type, resource_id)
        )
        return row is not None

    def patient_of(self, resource_type: str, resource_id: str) -> str | None:
        row = self._one(
            "SELECT patient FROM resources WHERE type = ? AND id = ?",
            (resource_type, resource_id),
        )
        return None if row is None else row["patient"]

    def list(self, resource_type: str, *, patient: str | None = None) -> list[StoredResource]:
        """Every resource of a type (in insertion order), optionally one patient's only."""
        with self._lock:
            state = (self._writes, int(self._conn.execute("PRAGMA data_version").fetchone()[0]))
            cached = self._lists.get((resource_type, patient))
            if cached is not None and cached[0] == state:
                return list(cached[1])
            if patient is None:
                rows = self._all(
                    "SELECT * FROM resources WHERE type = ? ORDER BY seq", (resource_type,)
                )
            else:
                rows = self._all(
                    "SELECT * FROM resources WHERE type = ? AND patient = ? ORDER BY seq",
                    (resource_type, patient),
                )
            listed = [self._listed(row) for row in rows]
            self._lists[(resource_type, patient)] = (state, listed)
            return list(listed)

    def _listed(self, row: sqlite3.Row) -> StoredResource:
        """`_row`, decoding the body only if its text changed since it was last decoded.

        The body is shared between the searches that list it: read it, never change it
        (every write path copies the resource it stores).
        """
        key, text = (row["type"], row["id"]), row["body"]
        cached = self._decoded.get(key)
        if cached is None or cached[0] != text:
            item = self._row(row)
        else:
            item = cached[1]
            if (item.version, item.patient, item.last_updated) == (
                row["version"],
                row["patient"],
                row["last_updated"],
            ):
                return item  # unchanged: the very same one again
            item = self._row(row, item.body, item.derived)
        self._decoded[key] = (text, item)
        return item

    def stored_text(self, body: Resource) -> str | None:
        """The JSON text the store keeps of `body`, if `body` is the very object it handed
        out for that text (a listed resource, never changed: see `_listed`); else None."""
        rtype, rid = body.get("resourceType"), body.get("id")
        if not isinstance(rtype, str) or not isinstance(rid, str):
            return None
        cached = self._decoded.get((rtype, rid))
        if cached is None or cached[1].body is not body:
            return None
        return cached[0]

    def count(self, resource_type: str | None = None) -> int:
        if resource_type is None:
            row = self._one("SELECT COUNT(*) AS n FROM resources")
        else:
            row = self._one("SELECT COUNT(*) AS n FROM resources WHERE type = ?", (resource_type,))
        return 0 if row is None else int(row["n"])

    def put(self, resource: Resource, *, patient: str | None) -> StoredResource:
        """Create or replace a resource; sets meta.versionId and meta.lastUpdated."""
        resource_type, resource_id = resource["resourceType"], resource["id"]
        with self.transaction():
            self._writes += 1  # every list read before is out of date (even if rolled back)
            current = self._one(
                "SELECT version FROM resources WHERE type = ? AND id = ?",
                (resource_type, resource_id),
            )
            version = 1 if current is None else int(current["version"]) + 1
            stamped = stamp(resource, version=version, last_updated=now_instant())
            body = json.dumps(stamped, separators=(",", ":"), ensure_ascii=False)
            if current is None:
                self._execute(
                    "INSERT INTO resources (type, id, patient, version, last_updated, body) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        resource_type,
                        resource_id,
                        patient,
                        version,
                        stamped["meta"]["lastUpdated"],
                        body,
                    ),
                )
            else:
                self._execute(
                    "UPDATE resources SET patient = ?, version = ?, last_updated = ?, body = ? "
                    "WHERE type = ? AND id = ?",
                    (
                        patient,
                        version,
                        stamped["meta"]["lastUpdated"],
                        body,
                        resource_type,
                        resource_id,
                    ),
                )
        return StoredResource(
            resource_type, resource_id, patient, version, stamped["meta"]["lastUpdated"], stamped
        )

    # -- launches -----------------------------------------------------------------------
    def add_launch(
        self,
        launch_id: str,
        *,
        client_id: str | None,
        patient: str | None,
        encounter: str | None,
        user: str,
        lifetime: float,
    ) -> None:
        self._execute(
            "INSERT INTO launches (id, client_id, patient, encounter, user, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (launch_id, client_id, patient, encounter, user, time.time() + lifetime),
        )

    def get_launch(self, launch_id: str) -> Mapping[str, Any] | None:
        row = self._one("SELECT * FROM launches WHERE id = ?", (launch_id,))
        if row is None or row["expires_at"] < time.time():
            return None
        return dict(row)

    # -- authorization codes ------------------------------------------------------------
    def add_code(self, **fields: Any) -> None:
        columns = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        self._execute(f"INSERT INTO codes ({columns}) VALUES ({marks})", fields.values())

    def get_code(self, code: str) -> Mapping[str, Any] | None:
        row = self._one("SELECT * FROM codes WHERE code = ?", (code,))
        return None if row is None else dict(row)

    def mark_code_used(self, code: str) -> None:
        self._execute("UPDATE codes SET used = 1 WHERE code = ?", (code,))

    def nonce_used(self, client_id: str, nonce: str) -> bool:
        row = self._one("SELECT 1 FROM codes WHERE client_id = ? AND nonce = ?", (client_id, nonce))
        return row is not None

    # -- tokens -------------------------------------------------------------------------
    def add_token(self, **fields: Any) -> None:
        columns = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        self._execute(f"INSERT INTO tokens ({columns}) VALUES ({marks})", fields.values())

    def get_token(self, access_token: str) -> Mapping[str, Any] | None:
        row = self._one("SELECT * FROM tokens WHERE access_token = ?", (access_token,))
        return None if row is None else dict(row)

    def get_token_by_refresh(self, refresh_token: str) -> Mapping[str, Any] | None:
        row = self._one("SELECT * FROM tokens WHERE refresh_token = ?", (refresh_token,))
        return None if row is None else dict(row)

    def revoke_refresh(self, refresh_token: str) -> None:
        self._execute(
            "UPDATE tokens SET refresh_revoked = 1 WHERE refresh_token = ?", (refresh_token,)
        )

    def revoke_grant(self, access_token: str) -> None:
        """RFC 7009: the token revoked, with the other half of its pair."""
        self._execute(
            "UPDATE tokens SET access_revoked = 1, refresh_revoked = 1 WHERE access_token = ?",
            (access_token,),
        )

    def revoke_tokens_from_code(self, code: str) -> None:
        """RFC 6749 §4.1.2: a replayed code revokes every token it produced."""
        self._execute(
            "UPDATE tokens SET access_revoked = 1, refresh_revoked = 1 WHERE code = ?", (code,)
        )


def stamp(resource: Resource, *, version: int, last_updated: str) -> Resource:
    """A copy of `resource` with meta.versionId and meta.lastUpdated set."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = last_updated
    stamped = {key: value for key, value in resource.items() if key != "meta"}
    # Keep resourceType and id first: the JSON reads like the spec's examples.
    ordered: Resource = {"resourceType": stamped.pop("resourceType")}
    if "id" in stamped:
        ordered["id"] = stamped.pop("id")
    ordered["meta"] = meta
    ordered.update(stamped)
    return ordered
