"""Visits: decisions, edits and the saved draft belong to the visit, not to one launch.

`visit_key` (smartapp.notes.visits) on what was shown, what was drafted and the saved
note, with `saved_note.visit_key` UNIQUE: one draft per visit. Rows written before this
migration get a key of their own (their launch's, or for notes their id), so no two
existing notes collide and none is merged with another.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 15:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import smartapp.db

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("shown_suggestion", "drafted_kind", "saved_note"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("visit_key", sa.String(length=64), nullable=True))
    # Keys of their own for earlier rows: no launch, no note, shares a visit with another.
    for table in ("shown_suggestion", "drafted_kind"):
        op.execute(f"UPDATE {table} SET visit_key = 'launch:' || substr(launch_session_id, 1, 56)")
    op.execute("UPDATE saved_note SET visit_key = 'note:' || id")
    with op.batch_alter_table("shown_suggestion", schema=None) as batch_op:
        batch_op.alter_column("visit_key", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_index("ix_shown_visit", ["visit_key", "snapshot_key"], unique=False)
    with op.batch_alter_table("drafted_kind", schema=None) as batch_op:
        batch_op.alter_column("visit_key", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_index("ix_drafted_visit", ["visit_key", "drafted_at"], unique=False)
    with op.batch_alter_table("saved_note", schema=None) as batch_op:
        batch_op.alter_column("visit_key", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_unique_constraint("uq_note_visit", ["visit_key"])
        batch_op.add_column(
            sa.Column("saved_at", smartapp.db.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("saved_note", schema=None) as batch_op:
        batch_op.drop_column("saved_at")
        batch_op.drop_constraint("uq_note_visit", type_="unique")
        batch_op.drop_column("visit_key")
    with op.batch_alter_table("drafted_kind", schema=None) as batch_op:
        batch_op.drop_index("ix_drafted_visit")
        batch_op.drop_column("visit_key")
    with op.batch_alter_table("shown_suggestion", schema=None) as batch_op:
        batch_op.drop_index("ix_shown_visit")
        batch_op.drop_column("visit_key")
