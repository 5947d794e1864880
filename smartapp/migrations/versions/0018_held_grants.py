"""Held grants: a launch's tokens kept for the notes it left pending after it ended.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import smartapp.db

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "smart_held_grant",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("iss", sa.Text(), nullable=False),
        sa.Column("token_endpoint", sa.Text(), nullable=False),
        sa.Column("access_token_enc", sa.Text(), nullable=True),
        sa.Column("refresh_token_enc", sa.Text(), nullable=True),
        sa.Column("access_expires_at", smartapp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("created_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_refreshed_at", smartapp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("absolute_expires_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_smart_held_grant_absolute_expires_at", "smart_held_grant", ["absolute_expires_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_smart_held_grant_absolute_expires_at", table_name="smart_held_grant")
    op.drop_table("smart_held_grant")
