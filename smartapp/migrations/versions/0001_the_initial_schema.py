"""The initial schema: launches, chart cache, suggestions and decisions, notes, governance.

Revision ID: 0001
Revises:
Create Date: 2026-11-23 11:46:48.567087
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import smartapp.db
from smartapp.audit.models import append_only_ddl

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = ("audit_event", "engine_transition", "kill_switch_event")


def upgrade() -> None:
    op.create_table(
        "audit_event",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("recorded", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("site", sa.String(length=512), nullable=True),
        sa.Column("patient", sa.String(length=256), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.create_index("ix_audit_action", ["action", "recorded"], unique=False)
        batch_op.create_index("ix_audit_actor", ["actor", "recorded"], unique=False)
        batch_op.create_index("ix_audit_patient", ["patient", "recorded"], unique=False)
        batch_op.create_index("ix_audit_recorded", ["recorded"], unique=False)

    op.create_table(
        "engine_version",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("engine_name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=True),
        sa.Column("kinds", sa.JSON(), nullable=False),
        sa.Column("site", sa.String(length=512), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("proposed_by", sa.String(length=256), nullable=False),
        sa.Column("proposed_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("evaluation", sa.JSON(), nullable=True),
        sa.Column("evaluated_by", sa.String(length=256), nullable=True),
        sa.Column("evaluated_at", smartapp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("approved_by", sa.String(length=256), nullable=True),
        sa.Column("approved_at", smartapp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("activated_at", smartapp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("supersedes", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("engine_name", "version", "site"),
    )
    op.create_table(
        "fhir_snapshot_cache",
        sa.Column("launch_session_id", sa.String(length=128), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("stored_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("launch_session_id"),
    )
    with op.batch_alter_table("fhir_snapshot_cache", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_fhir_snapshot_cache_expires_at"), ["expires_at"], unique=False
        )

    op.create_table(
        "kill_switch_event",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=128), nullable=False),
        sa.Column("engaged", sa.Boolean(), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("scope", "target", "seq"),
    )
    op.create_table(
        "rollout_rule",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("site", sa.String(length=512), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("percentage_bp", sa.Integer(), nullable=False),
        sa.Column("effective_from", smartapp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("effective_to", smartapp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("retired_at", smartapp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("retired_by", sa.String(length=256), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rollout_rule", schema=None) as batch_op:
        batch_op.create_index("ix_rollout_lookup", ["site", "kind", "retired_at"], unique=False)

    op.create_table(
        "saved_note",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("launch_session_id", sa.String(length=64), nullable=False),
        sa.Column("site", sa.String(length=512), nullable=False),
        sa.Column("patient_id", sa.String(length=128), nullable=False),
        sa.Column("encounter_id", sa.String(length=128), nullable=True),
        sa.Column("fhir_user", sa.String(length=256), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("suggestion_ids", sa.JSON(), nullable=False),
        sa.Column("engines", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("document_revision", sa.Integer(), nullable=False),
        sa.Column("chart_revision", sa.Integer(), nullable=False),
        sa.Column("claimed_until", smartapp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("document_reference", sa.String(length=256), nullable=True),
        sa.Column("provenance", sa.String(length=256), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=512), nullable=True),
        sa.Column("created_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", smartapp.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("saved_note", schema=None) as batch_op:
        batch_op.create_index("ix_note_launch", ["launch_session_id"], unique=False)
        batch_op.create_index("ix_note_status", ["status", "next_attempt_at"], unique=False)

    op.create_table(
        "shown_suggestion",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("launch_session_id", sa.String(length=64), nullable=False),
        sa.Column("snapshot_key", sa.String(length=64), nullable=False),
        sa.Column("site", sa.String(length=512), nullable=False),
        sa.Column("fhir_user", sa.String(length=256), nullable=True),
        sa.Column("patient_id", sa.String(length=128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=256), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("statements", sa.JSON(), nullable=False),
        sa.Column("citations", sa.JSON(), nullable=False),
        sa.Column("engine_name", sa.String(length=64), nullable=False),
        sa.Column("engine_version", sa.String(length=128), nullable=False),
        sa.Column("engine_extra", sa.JSON(), nullable=False),
        sa.Column("verification", sa.JSON(), nullable=False),
        sa.Column("shown_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("launch_session_id", "snapshot_key", "position"),
    )
    with op.batch_alter_table("shown_suggestion", schema=None) as batch_op:
        batch_op.create_index("ix_shown_launch", ["launch_session_id"], unique=False)
        batch_op.create_index("ix_shown_site_time", ["site", "shown_at"], unique=False)

    op.create_table(
        "smart_launch_session",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("iss", sa.Text(), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("token_endpoint", sa.Text(), nullable=False),
        sa.Column("access_token_enc", sa.Text(), nullable=True),
        sa.Column("refresh_token_enc", sa.Text(), nullable=True),
        sa.Column("access_expires_at", smartapp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("patient", sa.String(length=128), nullable=True),
        sa.Column("encounter", sa.String(length=128), nullable=True),
        sa.Column("fhir_user", sa.String(length=256), nullable=True),
        sa.Column("fhir_user_raw", sa.Text(), nullable=True),
        sa.Column("id_token_sub", sa.Text(), nullable=True),
        sa.Column("need_patient_banner", sa.Boolean(), nullable=False),
        sa.Column("smart_style_url", sa.Text(), nullable=True),
        sa.Column("tenant", sa.Text(), nullable=True),
        sa.Column("intent", sa.Text(), nullable=True),
        sa.Column("fhir_context", sa.Text(), nullable=True),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_refreshed_at", smartapp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("absolute_expires_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("smart_launch_session", schema=None) as batch_op:
        batch_op.create_index(
            "ix_smart_launch_session_expiry", ["absolute_expires_at"], unique=False
        )

    op.create_table(
        "smart_pending_authorization",
        sa.Column("state_hash", sa.String(length=64), nullable=False),
        sa.Column("binding_hash", sa.String(length=64), nullable=False),
        sa.Column("iss", sa.Text(), nullable=False),
        sa.Column("launch", sa.Text(), nullable=True),
        sa.Column("code_verifier_enc", sa.Text(), nullable=False),
        sa.Column("nonce", sa.String(length=128), nullable=True),
        sa.Column("requested_scope", sa.Text(), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=True),
        sa.Column("authorization_endpoint", sa.Text(), nullable=False),
        sa.Column("token_endpoint", sa.Text(), nullable=False),
        sa.Column("jwks_uri", sa.Text(), nullable=True),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("created_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("state_hash"),
    )
    with op.batch_alter_table("smart_pending_authorization", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_smart_pending_authorization_expires_at"), ["expires_at"], unique=False
        )

    op.create_table(
        "decision",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("suggestion_id", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("final_text", sa.Text(), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("decided_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("seconds_to_decision", sa.Double(), nullable=False),
        sa.Column("action_count", sa.Integer(), nullable=False),
        sa.Column("edit_distance", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["suggestion_id"], ["shown_suggestion.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("decision", schema=None) as batch_op:
        batch_op.create_index("ix_decision_suggestion", ["suggestion_id"], unique=False)

    op.create_table(
        "engine_transition",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("engine_version_id", sa.String(length=32), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["engine_version_id"],
            ["engine_version.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("engine_version_id", "seq"),
    )
    op.create_table(
        "feedback_forward",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("decision_id", sa.String(length=32), nullable=False),
        sa.Column("endpoint", sa.String(length=1024), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=256), nullable=True),
        sa.Column("created_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", smartapp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("sent_at", smartapp.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["decision_id"], ["decision.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("decision_id"),
    )
    with op.batch_alter_table("feedback_forward", schema=None) as batch_op:
        batch_op.create_index("ix_forward_due", ["status", "next_attempt_at"], unique=False)

    # Audit and change-control history are append-only in the database itself.
    dialect = op.get_bind().dialect.name
    for table in APPEND_ONLY:
        for statement in append_only_ddl(table, dialect):
            op.execute(statement)


def downgrade() -> None:
    with op.batch_alter_table("feedback_forward", schema=None) as batch_op:
        batch_op.drop_index("ix_forward_due")

    op.drop_table("feedback_forward")
    op.drop_table("engine_transition")
    with op.batch_alter_table("decision", schema=None) as batch_op:
        batch_op.drop_index("ix_decision_suggestion")

    op.drop_table("decision")
    with op.batch_alter_table("smart_pending_authorization", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_smart_pending_authorization_expires_at"))

    op.drop_table("smart_pending_authorization")
    with op.batch_alter_table("smart_launch_session", schema=None) as batch_op:
        batch_op.drop_index("ix_smart_launch_session_expiry")

    op.drop_table("smart_launch_session")
    with op.batch_alter_table("shown_suggestion", schema=None) as batch_op:
        batch_op.drop_index("ix_shown_site_time")
        batch_op.drop_index("ix_shown_launch")

    op.drop_table("shown_suggestion")
    with op.batch_alter_table("saved_note", schema=None) as batch_op:
        batch_op.drop_index("ix_note_status")
        batch_op.drop_index("ix_note_launch")

    op.drop_table("saved_note")
    with op.batch_alter_table("rollout_rule", schema=None) as batch_op:
        batch_op.drop_index("ix_rollout_lookup")

    op.drop_table("rollout_rule")
    op.drop_table("kill_switch_event")
    with op.batch_alter_table("fhir_snapshot_cache", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fhir_snapshot_cache_expires_at"))

    op.drop_table("fhir_snapshot_cache")
    op.drop_table("engine_version")
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_recorded")
        batch_op.drop_index("ix_audit_patient")
        batch_op.drop_index("ix_audit_actor")
        batch_op.drop_index("ix_audit_action")

    op.drop_table("audit_event")
