"""The LLM's drafts arrive after the rules': which kinds are on their way, when a card was decided.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 15:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import smartapp.db

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("drafted_kind") as batch:
        batch.add_column(
            sa.Column("pending_until", smartapp.db.UTCDateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("shown_suggestion") as batch:
        batch.add_column(
            sa.Column("decided_at", smartapp.db.UTCDateTime(timezone=True), nullable=True)
        )
    # Cards decided before this migration count as decided.
    op.execute(
        "UPDATE shown_suggestion SET decided_at = (SELECT MAX(decided_at) FROM decision"
        " WHERE decision.suggestion_id = shown_suggestion.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("shown_suggestion") as batch:
        batch.drop_column("decided_at")
    with op.batch_alter_table("drafted_kind") as batch:
        batch.drop_column("pending_until")
