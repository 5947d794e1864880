"""Leases on the outbox's work: who holds a note or a feedback forward, since when, until when.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 16:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import smartapp.db

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("saved_note") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=128), nullable=True))
        batch.add_column(
            sa.Column("claimed_at", smartapp.db.UTCDateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("feedback_forward") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=128), nullable=True))
        batch.add_column(
            sa.Column("claimed_at", smartapp.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(
            sa.Column("claimed_until", smartapp.db.UTCDateTime(timezone=True), nullable=True)
        )
    # A claim from before leases has no owner to renew it: let it go now.
    op.execute("UPDATE saved_note SET claimed_until = NULL")


def downgrade() -> None:
    with op.batch_alter_table("feedback_forward") as batch:
        batch.drop_column("claimed_until")
        batch.drop_column("claimed_at")
        batch.drop_column("claimed_by")
    with op.batch_alter_table("saved_note") as batch:
        batch.drop_column("claimed_at")
        batch.drop_column("claimed_by")
