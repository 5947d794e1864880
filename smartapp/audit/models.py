"""The audit trail's table, append-only down to the database (triggers refuse UPDATE/DELETE).

The row shape follows what a FHIR R4 AuditEvent needs (who, what, when, where, outcome):
https://hl7.org/fhir/R4/auditevent.html
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DDL, JSON, Index, String, Table, event
from sqlalchemy.orm import Mapped, mapped_column

from smartapp.db import Base, UTCDateTime, utcnow
from smartapp.feedback.models import new_id

OUTCOMES = ("success", "failure", "error")


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


append_only(AuditEvent.__table__)  # type: ignore[arg-type]
guard_orm(AuditEvent)
