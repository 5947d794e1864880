"""The app's store: one SQLAlchemy 2 engine per app (SQLite by default, PostgreSQL in production).

Each concern declares its tables on `Base` in its own `models.py`; this module owns the
engine, the sessions and the column type they share (UTC timestamps).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask, current_app
from sqlalchemy import DateTime, Dialect, Text, create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
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
        kwargs: dict[str, Any] = {"future": True, "pool_pre_ping": True}
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
        with self._factory() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


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
