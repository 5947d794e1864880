"""Note composition: when the launch began and where the note's characters came from.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 13:25:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import smartapp.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_COUNTS = ("chars_total", "chars_accepted", "chars_edited", "edits")


def upgrade() -> None:
    with op.batch_alter_table("saved_note", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("launched_at", smartapp.db.UTCDateTime(timezone=True), nullable=True)
        )
        for name in _COUNTS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("saved_note", schema=None) as batch_op:
        for name in (*reversed(_COUNTS), "launched_at"):
            batch_op.drop_column(name)
