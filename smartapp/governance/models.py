"""Governance tables: phased-rollout rules, the engine registry with its history, kill switches.

History is kept by appending: state transitions and kill-switch settings are append-only
rows (refused UPDATE/DELETE in the database), and a rollout rule is retired, never deleted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    event,
    insert,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from smartapp.audit.models import append_only, guard_orm
from smartapp.db import Base, EncryptedText, UTCDateTime, utcnow
from smartapp.feedback.models import new_id
from smartapp.governance.signal import mark_changed

#: Matches every site or every kind in a rollout rule or an engine version's site.
ANY = "*"

ENGINE_STATES = ("proposed", "evaluated", "approved", "active", "superseded", "rolled_back")
KILL_SCOPES = ("kind", "engine")


class RolloutRule(Base):
    """Who gets a suggestion kind at a site: on/off, a share of clinicians, and a date window."""

    __tablename__ = "rollout_rule"
    __table_args__ = (Index("ix_rollout_lookup", "site", "kind", "retired_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    site: Mapped[str] = mapped_column(String(512))  # an issuer, or "*"
    kind: Mapped[str] = mapped_column(String(64))  # a suggestion kind, or "*"
    enabled: Mapped[bool] = mapped_column(Boolean)
    #: Share of clinicians, in basis points (0–10000), chosen by a stable hash of fhirUser.
    percentage_bp: Mapped[int] = mapped_column(Integer, default=10_000)
    effective_from: Mapped[datetime | None] = mapped_column(UTCDateTime())
    effective_to: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    reason: Mapped[str | None] = mapped_column(Text)
    #: Set when the rule is withdrawn; the row stays as history.
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    retired_by: Mapped[str | None] = mapped_column(String(256))

    @property
    def percentage(self) -> float:
        return self.percentage_bp / 100

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "site": self.site,
            "kind": self.kind,
            "enabled": self.enabled,
            "percentage": self.percentage,
            "effectiveFrom": _iso(self.effective_from),
            "effectiveTo": _iso(self.effective_to),
            "createdBy": self.created_by,
            "createdAt": _iso(self.created_at),
            "reason": self.reason,
            "retiredAt": _iso(self.retired_at),
            "retiredBy": self.retired_by,
        }


class EngineVersion(Base):
    """One version of a suggestion engine moving through change control."""

    __tablename__ = "engine_version"
    __table_args__ = (UniqueConstraint("engine_name", "version", "site"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    engine_name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(128))
    model: Mapped[str | None] = mapped_column(String(256))
    kinds: Mapped[list[str]] = mapped_column(JSON)
    #: The issuer this version is for, or "*" for every site.
    site: Mapped[str] = mapped_column(String(512), default=ANY)
    state: Mapped[str] = mapped_column(String(16), default="proposed")
    proposed_by: Mapped[str] = mapped_column(String(256))
    proposed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: The stored `smartapp evaluate --record` report that cleared the grounding minimum,
    #: and its SHA-256 (`EvaluationRun.sha256`): the app's own run, never a posted JSON.
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    evaluation_sha256: Mapped[str | None] = mapped_column(String(64))
    evaluated_by: Mapped[str | None] = mapped_column(String(256))
    evaluated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    approved_by: Mapped[str | None] = mapped_column(String(256))
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    activated_by: Mapped[str | None] = mapped_column(String(256))
    #: The versions this one replaced when it became active: a rollback restores them.
    supersedes: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Its ONC HTI-1 source attributes as `source_attributes.toml` gave them when it was
    #: registered (smartapp.governance.attributes): its model card, unchanged by a later
    #: edit of the file. NULL only for a row written without the registry.
    source_attributes: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    transitions: Mapped[list[EngineTransition]] = relationship(
        order_by="EngineTransition.seq", viewonly=True
    )

    @property
    def label(self) -> str:
        return f"{self.engine_name} {self.version}"

    def to_json(self, *, with_history: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "engine": self.engine_name,
            "version": self.version,
            "model": self.model,
            "kinds": list(self.kinds),
            "site": self.site,
            "state": self.state,
            "proposedBy": self.proposed_by,
            "proposedAt": _iso(self.proposed_at),
            "evaluatedBy": self.evaluated_by,
            "evaluatedAt": _iso(self.evaluated_at),
            "evaluation": self.evaluation,
            "evaluationSha256": self.evaluation_sha256,
            "approvedBy": self.approved_by,
            "approvedAt": _iso(self.approved_at),
            "activatedAt": _iso(self.activated_at),
            "activatedBy": self.activated_by,
            "supersedes": list(self.supersedes or []),
            "sourceAttributes": self.source_attributes,
        }
        if with_history:
            data["history"] = [t.to_json() for t in self.transitions]
        return data


class EngineTransition(Base):
    """One step of an engine version's life: from which state to which, who, when, why."""

    __tablename__ = "engine_transition"
    __table_args__ = (UniqueConstraint("engine_version_id", "seq"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    engine_version_id: Mapped[str] = mapped_column(ForeignKey("engine_version.id"))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: 1, 2, 3... per version: the order of steps even when clocks tie, and two concurrent
    #: steps on one version cannot both be written.
    seq: Mapped[int] = mapped_column(Integer, default=1)

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.from_state,
            "to": self.to_state,
            "actor": self.actor,
            "reason": self.reason,
            "at": _iso(self.at),
        }


class KillSwitchEvent(Base):
    """A kill switch thrown or released; the latest row per (scope, target) is in force."""

    __tablename__ = "kill_switch_event"
    __table_args__ = (UniqueConstraint("scope", "target", "seq"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    scope: Mapped[str] = mapped_column(String(16))  # "kind" or "engine"
    target: Mapped[str] = mapped_column(String(128))  # the kind, or the engine name
    engaged: Mapped[bool] = mapped_column(Boolean)
    actor: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: 1, 2, 3... per (scope, target): the order of settings even when clocks tie or step back.
    seq: Mapped[int] = mapped_column(Integer, default=0)

    def to_json(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "target": self.target,
            "engaged": self.engaged,
            "actor": self.actor,
            "reason": self.reason,
            "at": _iso(self.at),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


for _model in (EngineTransition, KillSwitchEvent):
    append_only(_model.__table__)  # type: ignore[arg-type]
    guard_orm(_model)


class GovernanceVersion(Base):
    """One row (id 1), bumped by every change to the tables above: the policy cache's signal
    (`smartapp.governance.state`) that any process must read governance again."""

    __tablename__ = "governance_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=0)


@event.listens_for(GovernanceVersion.__table__, "after_create")
def _first_version(target: Any, connection: Any, **kw: Any) -> None:
    """`create_all` (tests, the sandbox) gets the row the migration inserts."""
    connection.execute(insert(GovernanceVersion).values(id=1, version=0))


_GOVERNED = (RolloutRule, KillSwitchEvent, EngineVersion, EngineTransition)


@event.listens_for(Session, "after_flush")
def _bump_on_governance_change(session: Session, flush_context: Any) -> None:
    """Any write to a governance table bumps the counter in the same transaction."""
    changed = (*session.new, *session.dirty, *session.deleted)
    if any(isinstance(obj, _GOVERNED) for obj in changed):
        session.connection().execute(
            update(GovernanceVersion)
            .where(GovernanceVersion.id == 1)
            .values(version=GovernanceVersion.version + 1)
        )
        # And, after the commit, the cross-process signal (Redis), when the store has one.
        mark_changed(session)


REVIEW_STATES = ("open", "triaged", "assigned", "closed")
#: How a closed review ended: what the governance team did about the flag.
CLOSE_ACTIONS = ("engine_fix", "site_configuration", "training", "no_action")
SEVERITIES = ("low", "medium", "high")


class FlagReview(Base):
    """The governance team's review of one flagged suggestion: triage, assign, close.

    The row holds the current state; every step is an append-only `FlagReviewEvent`.
    """

    __tablename__ = "flag_review"

    suggestion_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("shown_suggestion.id"), primary_key=True
    )
    status: Mapped[str] = mapped_column(String(16), default="open")
    severity: Mapped[str | None] = mapped_column(String(16))
    assignee: Mapped[str | None] = mapped_column(String(512))
    close_action: Mapped[str | None] = mapped_column(String(32))
    #: What changed because of it: an engine version id or a rollout rule id (linked on close).
    linked_change: Mapped[str | None] = mapped_column(String(64))
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    events: Mapped[list[FlagReviewEvent]] = relationship(
        order_by="FlagReviewEvent.seq", viewonly=True
    )


class FlagReviewEvent(Base):
    """One step of a review (who, when, what), never changed once written."""

    __tablename__ = "flag_review_event"
    __table_args__ = (UniqueConstraint("suggestion_id", "seq"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    suggestion_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("flag_review.suggestion_id"), index=True
    )
    seq: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(512))
    step: Mapped[str] = mapped_column(String(16))  # triage, assign, comment, close, reopen
    #: A reviewer's comment may quote the chart: encrypted at rest.
    comment: Mapped[str | None] = mapped_column(EncryptedText())
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "actor": self.actor,
            "step": self.step,
            "comment": self.comment,
            "detail": self.detail,
            "at": _iso(self.at),
        }


append_only(FlagReviewEvent.__table__)  # type: ignore[arg-type]
guard_orm(FlagReviewEvent)


class EvaluationRun(Base):
    """A `smartapp evaluate --record` run, stored by the app; change control cites its hash."""

    __tablename__ = "evaluation_run"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    #: SHA-256 of the canonical JSON of `report`: how an engine version names it.
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    cohort: Mapped[str] = mapped_column(String(512))
    site: Mapped[str | None] = mapped_column(String(512))
    #: Who ran the command (the operating-system account), for the record only.
    recorded_by: Mapped[str] = mapped_column(String(256))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def to_json(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "cohort": self.cohort,
            "site": self.site,
            "recordedBy": self.recorded_by,
            "recordedAt": _iso(self.recorded_at),
            "report": self.report,
        }
