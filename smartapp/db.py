"""The app's store: one SQLAlchemy 2 engine per app (SQLite by default, PostgreSQL in production).

Each concern declares its tables on `Base` in its own `models.py`; this module owns the
engine, the sessions and the column type they share (UTC timestamps).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask, current_app
from sqlalchemy import DateTime, Dialect, Text, create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, ORMExecuteState, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

log = logging.getLogger(__name__)

#: How long a statement waits for a locked SQLite file before the request answers 503
#: `store_unavailable` (it waited 30 s and answered 500 before); SMARTAPP_STORE_WAIT_SECONDS.
SQLITE_WAIT_SECONDS = 10.0

#: Alembic's migration scripts (`smartapp/migrations/versions/`).
MIGRATIONS = Path(__file__).with_name("migrations")


class Base(DeclarativeBase):
    """Every table of the app's store (each concern's models.py declares its own)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value if value.tzinfo else value.replace(tzinfo=UTC)


#: The key of stores built outside the app (tests, tools): create_app and every command
#: pass the settings' SMARTAPP_SECRET_KEY instead.
UNKEYED = "smartapp-store-without-a-configured-key"


class EncryptedText(TypeDecorator[str]):
    """PHI at rest (chart snapshots, comments, edited texts): encrypted under the store's
    key, as tokens are; text stored before encryption was added still reads."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else _phi_cipher(dialect).seal_text(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else _phi_cipher(dialect).open_text(value)


class EncryptedJSON(TypeDecorator[Any]):
    """A JSON value that is PHI (an outbox payload holding a clinician's edit), encrypted as
    EncryptedText is; JSON stored before encryption still reads."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return str(_phi_cipher(dialect).seal_text(text))

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else json.loads(_phi_cipher(dialect).open_text(value))


def _phi_cipher(dialect: Dialect) -> Any:
    cipher = getattr(dialect, "smartapp_phi_cipher", None)
    if cipher is None:
        raise RuntimeError("PHI columns need an engine made by smartapp.db.Database")
    return cipher


class Database:
    """An engine and a session factory; `with db.session() as s:` commits or rolls back.

    `secret_key` (and the `previous_keys` being rotated out) seal the audit chain and
    encrypt PHI columns (`smartapp.atrest`); sessions carry them in `Session.info`.
    """

    def __init__(
        self,
        url: str,
        *,
        secret_key: str | None = None,
        previous_keys: tuple[str, ...] = (),
        wait_seconds: float | None = None,
    ) -> None:
        from smartapp.atrest import Cipher, derive

        key = secret_key or UNKEYED
        keys = (key, *(k for k in previous_keys if k and k != key))
        from smartapp import fastjson

        # JSON columns (a suggestion's statements and citations: four per row, on every
        # sidebar request) read by orjson, exactly as json.loads reads them.
        kwargs: dict[str, Any] = {
            "future": True,
            "pool_pre_ping": True,
            "json_deserializer": fastjson.loads,
        }
        #: The longest a statement waits for a lock (SQLite), or for a connection from the
        #: pool, before the request answers 503 store_unavailable.
        self.wait_seconds = SQLITE_WAIT_SECONDS if wait_seconds is None else wait_seconds
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": self.wait_seconds}
        elif url.startswith("postgresql"):
            # An unreachable server (no answer to the SYN) would otherwise hold the request
            # for the operating system's TCP timeout (minutes), and an exhausted pool 30 s.
            kwargs["pool_timeout"] = self.wait_seconds
            kwargs["connect_args"] = {"connect_timeout": max(1, round(self.wait_seconds))}
        self.url = url
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            wait_ms = int(self.wait_seconds * 1000)
            event.listen(
                self.engine,
                "connect",
                lambda connection, record: _sqlite_pragmas(connection, record, wait_ms=wait_ms),
            )
        #: Handed to every session: the audit chain's seal keys, current first.
        self.info: dict[str, Any] = {
            "smartapp.audit.seal_keys": tuple(derive(k, "audit") for k in keys)
        }
        #: PHI columns (`EncryptedText`) find it on the engine's dialect, per store.
        self.phi_cipher = Cipher(key, purpose="phi", previous=keys[1:])
        self.engine.dialect.smartapp_phi_cipher = self.phi_cipher  # type: ignore[attr-defined]
        self._factory = sessionmaker(self.engine, expire_on_commit=False, info=self.info)

    @classmethod
    def from_settings(cls, settings: Any) -> Database:
        """The app's store with its keys (what create_app and every command open)."""
        return cls(
            settings.database_url,
            secret_key=settings.secret_key,
            previous_keys=settings.previous_secret_keys,
            wait_seconds=getattr(settings, "store_wait_seconds", None),
        )

    def alembic_config(self, connection: Any = None) -> Any:
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        config.attributes["connection"] = connection
        return config

    def upgrade(self) -> None:
        """Bring the schema to the newest migration (an empty database gets every table)."""
        from alembic import command

        with self.engine.begin() as connection:
            command.upgrade(self.alembic_config(connection), "head")

    def at_head(self) -> tuple[bool, str]:
        """Whether the schema is at the newest migration, and in words why not."""
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        heads = set(ScriptDirectory.from_config(self.alembic_config()).get_heads())
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            current = set(MigrationContext.configure(connection).get_current_heads())
        if current == heads:
            return True, "at head"
        return False, f"schema at {sorted(current) or 'nothing'}, newest is {sorted(heads)}"

    def create_all(self) -> None:
        import_models()
        Base.metadata.create_all(self.engine)

    def drop_all(self) -> None:
        """Every table, and Alembic's record of the schema version (tests start from empty)."""
        self.create_all()
        Base.metadata.drop_all(self.engine)
        with self.engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS alembic_version"))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed when the block ends, rolled back if it raises.

        Inside `unit()` (and not inside another block of it) the block runs on the unit's
        session and connection instead, with the same outcome: see `unit`."""
        unit = _UNIT.get()
        if unit is not None and unit.database is self and not unit.active:
            with unit.block() as session:
                yield session
            return
        with self._factory() as session, session.begin():
            yield session

    @contextmanager
    def unit(self) -> Iterator[None]:
        """One session and one pooled connection for every `session()` block in this one
        (a request): on PostgreSQL each checkout pings the server and each block commits,
        so a sidebar request of five blocks paid ten round trips more than its statements.

        What each block does stands as it did alone: a block that wrote (an INSERT,
        UPDATE or DELETE, or a flush) commits when it ends, a block that raises rolls back
        (with it only the reads since the last commit), and what a block loaded leaves the
        session with it (detached, as from a closed session). Reads share one transaction,
        ended with the unit. A block opened inside another block is its own session, as
        before. Call `release()` before a long wait (a chart read from the EHR, drafting),
        so that the connection is not held idle meanwhile. Each thread (context) has its own.
        """
        current = _UNIT.get()
        if current is not None and current.database is self:
            yield
            return
        unit = _Unit(self)
        token = _UNIT.set(unit)
        try:
            yield
        except BaseException:
            _UNIT.reset(token)
            unit.close(commit=False)
            raise
        _UNIT.reset(token)
        unit.close(commit=True)

    def release(self) -> None:
        """End this context's unit's transaction and give its connection back to the pool (a
        later block takes one again); nothing outside a unit."""
        unit = _UNIT.get()
        if unit is not None and unit.database is self and not unit.active:
            unit.close(commit=True)

    def new_session(self, connection: Connection) -> Session:
        return self._factory(bind=connection)

    def dispose(self) -> None:
        self.engine.dispose()


#: WRITTEN is set in a unit's Session.info by a statement that is not a SELECT.
WRITTEN = "smartapp.db.written"


def _note_write(state: ORMExecuteState) -> None:
    if not state.is_select:
        state.session.info[WRITTEN] = True


def _note_flush(session: Session, _context: Any) -> None:
    session.info[WRITTEN] = True


class _Unit:
    """`Database.unit()`'s session and connection, taken at its first block."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.active = False
        self._connection: Connection | None = None
        self._session: Session | None = None

    def _open(self) -> Session:
        if self._session is None:
            self._connection = self.database.engine.connect()
            session = self.database.new_session(self._connection)
            event.listen(session, "do_orm_execute", _note_write)
            event.listen(session, "after_flush", _note_flush)
            self._session = session
        return self._session

    @contextmanager
    def block(self) -> Iterator[Session]:
        session = self._open()
        self.active = True
        try:
            if not session.in_transaction():
                session.begin()
            yield session
            session.flush()
        except BaseException:
            self.active = False
            self._undo()
            raise
        self.active = False
        if session.info.pop(WRITTEN, False):
            try:
                session.commit()
            except BaseException:
                self._undo()
                raise
        session.expunge_all()

    def _undo(self) -> None:
        """Roll back after a failed block; a unit whose connection broke starts afresh."""
        session = self._session
        if session is None:
            return
        session.info.pop(WRITTEN, None)
        try:
            session.rollback()
            session.expunge_all()
        except Exception:  # noqa: BLE001 - the block's own error is the one to raise
            self.close(commit=False, quiet=True)

    def close(self, *, commit: bool, quiet: bool = False) -> None:
        session, connection = self._session, self._connection
        self._session = self._connection = None
        if session is None or connection is None:
            return
        try:
            if session.in_transaction():
                if commit:
                    session.commit()
                else:
                    session.rollback()
        except Exception:
            if not quiet:
                raise
        finally:
            try:
                session.close()
                connection.close()
            except Exception:
                if not quiet:
                    raise


_UNIT: ContextVar[_Unit | None] = ContextVar("smartapp_db_unit", default=None)


#: Modules that declare tables; each concern adds its own here.
MODEL_MODULES: tuple[str, ...] = (
    "smartapp.smart.models",
    "smartapp.feedback.models",
    "smartapp.feedback.forwarding",
    "smartapp.notes.models",
    "smartapp.notes.pulse",
    "smartapp.fhir.cache",
    "smartapp.audit.models",
    "smartapp.governance.models",
    "smartapp.cdshooks.models",
    "smartapp.baseline.models",
)


def import_models() -> None:
    """Import every models module so that its tables are on `Base.metadata`."""
    import importlib

    for name in MODEL_MODULES:
        importlib.import_module(name)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any, *, wait_ms: int | None = None) -> None:
    # WAL lets the sidebar read while the outbox worker writes; foreign keys are off by default.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    busy = int(SQLITE_WAIT_SECONDS * 1000) if wait_ms is None else wait_ms
    cursor.execute(f"PRAGMA busy_timeout={busy}")
    cursor.close()


def init_app(app: Flask, database: Database, *, migrate: bool = True) -> None:
    """Attach the store; bring its schema up to date only when `migrate` (sandbox mode, or
    SMARTAPP_MIGRATE_ON_START): elsewhere `smartapp db upgrade` does it, once, before the
    processes start, so that several processes never race to migrate."""
    app.extensions["smartapp.db"] = database
    if migrate:
        database.upgrade()
        return
    try:
        ready, detail = database.at_head()
    except Exception as exc:  # noqa: BLE001 - the store may be down: /readyz says so later
        log.warning("the store could not be checked at start-up: %s", type(exc).__name__)
        return
    if not ready:
        log.warning("the store's %s: run `smartapp db upgrade` (/readyz answers 503)", detail)


def get_db() -> Database:
    return get_database(current_app)


def get_database(app: Flask) -> Database:
    db: Database = app.extensions["smartapp.db"]
    return db
