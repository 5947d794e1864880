"""Chart reads announced across processes: which process reads a launch's chart now.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-03 21:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import smartapp.db

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chart_read",
        sa.Column("launch_session_id", sa.String(length=128), nullable=False),
        sa.Column("claimed_by", sa.String(length=160), nullable=False),
        sa.Column("reader", sa.String(length=32), nullable=False),
        sa.Column("claimed_until", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("launch_session_id"),
    )
    op.create_index("ix_chart_read_claimed_until", "chart_read", ["claimed_until"])


def downgrade() -> None:
    op.drop_index("ix_chart_read_claimed_until", table_name="chart_read")
    op.drop_table("chart_read")
