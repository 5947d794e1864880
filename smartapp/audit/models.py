"""The audit trail's table, append-only down to the database (triggers refuse UPDATE/DELETE).

The row shape follows what a FHIR R4 AuditEvent needs (who, what, when, where, outcome):
https://hl7.org/fhir/R4/auditevent.html
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DDL, JSON, Index, Integer, String, Table, event
from sqlalchemy.orm import Mapped, mapped_column

from smartapp.db import Base, UTCDateTime, utcnow
from smartapp.feedback.models import new_id

OUTCOMES = ("success", "failure", "error")
#: The seal "before" the first row of the chain.
GENESIS = "0" * 64


class AppendOnlyError(RuntimeError):
    """Code tried to change or remove a row of an append-only table."""


def _ddl(statement: str) -> DDL:
    return DDL(statement)  # type: ignore[no-untyped-call]  # SQLAlchemy leaves DDL untyped


def append_only_ddl(name: str, dialect: str) -> list[str]:
    """The statements that make table `name` refuse UPDATE and DELETE (and TRUNCATE)."""
    message = f"{name} is append-only"
    if dialect == "sqlite":
        return [
            f"CREATE TRIGGER {name}_no_{op.lower()} BEFORE {op} ON {name} "
            f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
            for op in ("UPDATE", "DELETE")
        ]
    if dialect == "postgresql":
        return [
            f"CREATE OR REPLACE FUNCTION {name}_append_only() RETURNS trigger "
            f"LANGUAGE plpgsql AS $fn$ BEGIN RAISE EXCEPTION '{message}'; END $fn$",
            f"CREATE TRIGGER {name}_no_change BEFORE UPDATE OR DELETE ON {name} "
            f"FOR EACH ROW EXECUTE FUNCTION {name}_append_only()",
            f"CREATE TRIGGER {name}_no_truncate BEFORE TRUNCATE ON {name} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {name}_append_only()",
        ]
    return []


def append_only(table: Table) -> None:
    """Refuse UPDATE and DELETE on `table` in the database itself, not only in this code.

    A trigger is created with the table (SQLite and PostgreSQL; the migrations create the
    same ones); another backend gets only the ORM guard. DROP TABLE still works: tests and
    `drop_all` need it, and it is not an edit of the record.
    """
    for dialect in ("sqlite", "postgresql"):
        for statement in append_only_ddl(table.name, dialect):
            event.listen(table, "after_create", _ddl(statement).execute_if(dialect=dialect))


def chain_head_ddl(dialect: str) -> list[str]:
    """The trigger that keeps `audit_chain.hash` at the last sealed row's, in the same
    transaction as the INSERT (one statement fewer per audited request)."""
    if dialect == "sqlite":
        return [
            "CREATE TRIGGER audit_event_chain_head AFTER INSERT ON audit_event "
            "WHEN NEW.seq IS NOT NULL "
            "BEGIN UPDATE audit_chain SET hash = NEW.hash WHERE id = 1; END"
        ]
    if dialect == "postgresql":
        return [
            "CREATE OR REPLACE FUNCTION audit_event_chain_head() RETURNS trigger "
            "LANGUAGE plpgsql AS $fn$ BEGIN "
            "UPDATE audit_chain SET hash = NEW.hash WHERE id = 1; RETURN NULL; END $fn$",
            "CREATE TRIGGER audit_event_chain_head AFTER INSERT ON audit_event "
            "FOR EACH ROW WHEN (NEW.seq IS NOT NULL) EXECUTE FUNCTION audit_event_chain_head()",
        ]
    return []


def _refuse_change(_mapper: Any, _connection: Any, target: Any) -> None:
    raise AppendOnlyError(f"{type(target).__tablename__} rows are never changed or deleted")


def guard_orm(model: type[Base]) -> None:
    """The same refusal in the ORM, so the mistake fails in tests on any backend."""
    event.listen(model, "before_update", _refuse_change)
    event.listen(model, "before_delete", _refuse_change)


class AuditEvent(Base):
    """One audited event: a PHI access, an admin action or a configuration change."""

    __tablename__ = "audit_event"
    __table_args__ = (
        Index("ix_audit_recorded", "recorded"),
        Index("ix_audit_actor", "actor", "recorded"),
        Index("ix_audit_patient", "patient", "recorded"),
        Index("ix_audit_action", "action", "recorded"),
        Index("ix_audit_seq", "seq", unique=True),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    recorded: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: Who acted: a normalized fhirUser reference ("Practitioner/1"), "admin-api-token", or None.
    actor: Mapped[str | None] = mapped_column(String(256))
    #: A dotted verb from `smartapp.audit.Action` ("chart.read", "engine.approve", ...).
    action: Mapped[str] = mapped_column(String(64))
    #: The issuer (FHIR base URL) the event concerns, when it concerns one.
    site: Mapped[str | None] = mapped_column(String(512))
    #: "Patient/<id>" on that site, when a patient's data was touched.
    patient: Mapped[str | None] = mapped_column(String(256))
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    #: What was done, to what: ids, counts, before/after values. Never tokens (scrubbed).
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Place in the hash chain (1, 2, ...); None only for rows written before the chain.
    seq: Mapped[int | None] = mapped_column(Integer)
    #: The seal of row seq-1 (GENESIS for row 1) and this row's own (`chain.seal`).
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))


class AuditChainHead(Base):
    """One row: the last place and seal of the chain. Appends lock it, so two processes
    never take the same place; `verify` compares it with the last row (a trimmed tail)."""

    __tablename__ = "audit_chain"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    #: Rows written before the chain existed (counted by the migration that added it).
    legacy_rows: Mapped[int] = mapped_column(Integer)


append_only(AuditEvent.__table__)  # type: ignore[arg-type]
guard_orm(AuditEvent)
# The head exists from the start (the migration seeds it too): appends only ever update it.
event.listen(
    AuditChainHead.__table__,
    "after_create",
    _ddl(f"INSERT INTO audit_chain (id, seq, hash, legacy_rows) VALUES (1, 0, '{GENESIS}', 0)"),
)
for _dialect in ("sqlite", "postgresql"):
    for _statement in chain_head_ddl(_dialect):
        event.listen(
            AuditEvent.__table__, "after_create", _ddl(_statement).execute_if(dialect=_dialect)
        )
