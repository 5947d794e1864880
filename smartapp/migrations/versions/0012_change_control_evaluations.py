"""Change control cites stored evaluations by hash and records who activated a version.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import smartapp.db

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evaluation_run",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("cohort", sa.String(length=512), nullable=False),
        sa.Column("site", sa.String(length=512), nullable=True),
        sa.Column("recorded_by", sa.String(length=256), nullable=False),
        sa.Column("recorded_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256"),
    )
    op.add_column("engine_version", sa.Column("evaluation_sha256", sa.String(64), nullable=True))
    op.add_column("engine_version", sa.Column("activated_by", sa.String(256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("engine_version") as batch:
        batch.drop_column("activated_by")
        batch.drop_column("evaluation_sha256")
    op.drop_table("evaluation_run")
