"""Time in the sidebar: the seconds the sidebar was visible before each save of a note.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03 16:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for the notes saved before it was measured (and by clients that do not send it).
    with op.batch_alter_table("saved_note", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seconds_in_sidebar", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("saved_note", schema=None) as batch_op:
        batch_op.drop_column("seconds_in_sidebar")
