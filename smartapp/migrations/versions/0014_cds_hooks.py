"""The CDS Hooks service: seen request JWTs (replay), issued cards and their feedback.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 20:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import smartapp.db

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cds_seen_jti",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("expires_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_cds_seen_jti_expiry", "cds_seen_jti", ["expires_at"])
    op.create_table(
        "cds_card",
        sa.Column("uuid", sa.String(length=64), nullable=False),
        sa.Column("service_id", sa.String(length=64), nullable=False),
        sa.Column("client", sa.Text(), nullable=False),
        sa.Column("site", sa.Text(), nullable=False),
        sa.Column("patient_id", sa.String(length=128), nullable=False),
        sa.Column("hook_instance", sa.String(length=128), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("issued_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("uuid"),
    )
    op.create_table(
        "cds_card_feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("card_uuid", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("outcome_timestamp", sa.String(length=64), nullable=False),
        sa.Column("override_reason", sa.JSON(), nullable=True),
        sa.Column("user_comment", sa.Text(), nullable=True),
        sa.Column("accepted_suggestions", sa.JSON(), nullable=False),
        sa.Column("received_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("card_uuid", "outcome", "outcome_timestamp", name="uq_cds_feedback"),
    )
    op.create_index("ix_cds_card_feedback_card_uuid", "cds_card_feedback", ["card_uuid"])


def downgrade() -> None:
    op.drop_index("ix_cds_card_feedback_card_uuid", table_name="cds_card_feedback")
    op.drop_table("cds_card_feedback")
    op.drop_table("cds_card")
    op.drop_index("ix_cds_seen_jti_expiry", table_name="cds_seen_jti")
    op.drop_table("cds_seen_jti")
