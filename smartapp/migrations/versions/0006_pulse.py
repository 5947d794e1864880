"""The clinician pulse after a sampled saved note.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 13:35:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import smartapp.db

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pulse_response",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("note_id", sa.String(length=32), nullable=False),
        sa.Column("site", sa.String(length=512), nullable=False),
        sa.Column("fhir_user", sa.String(length=512), nullable=True),
        sa.Column("asked_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("answered_at", smartapp.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("saved_time", sa.Integer(), nullable=True),
        sa.Column("checking", sa.Integer(), nullable=True),
        sa.Column("skipped", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["note_id"], ["saved_note.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("note_id"),
    )


def downgrade() -> None:
    op.drop_table("pulse_response")
