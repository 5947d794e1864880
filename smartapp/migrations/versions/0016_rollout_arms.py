"""The concurrent control: each saved note records the clinician's arm in each partial rollout.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for the notes already saved: their arms were not recorded, so they count in none.
    with op.batch_alter_table("saved_note", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rollout_arms", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("saved_note", schema=None) as batch_op:
        batch_op.drop_column("rollout_arms")
