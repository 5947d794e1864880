"""Governed drafts: the engine choice each suggestion was drafted under, and drafted kinds.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 11:54:07.715400
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import smartapp.db

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drafted_kind",
        sa.Column("launch_session_id", sa.String(length=64), nullable=False),
        sa.Column("snapshot_key", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("choice", sa.String(length=160), nullable=False),
        sa.Column("drafted_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("launch_session_id", "snapshot_key", "kind", "choice"),
    )
    with op.batch_alter_table("shown_suggestion", schema=None) as batch_op:
        # Rows drafted before this migration were drafted as configured: choice "".
        batch_op.add_column(
            sa.Column("choice", sa.String(length=160), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("shown_suggestion", schema=None) as batch_op:
        batch_op.drop_column("choice")

    op.drop_table("drafted_kind")
