"""Flag review: the governance team's workflow for flagged suggestions.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 13:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import smartapp.db
from smartapp.audit.models import append_only_ddl

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "flag_review",
        sa.Column("suggestion_id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=True),
        sa.Column("assignee", sa.String(length=512), nullable=True),
        sa.Column("close_action", sa.String(length=32), nullable=True),
        sa.Column("linked_change", sa.String(length=64), nullable=True),
        sa.Column("opened_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("closed_at", smartapp.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["suggestion_id"], ["shown_suggestion.id"]),
        sa.PrimaryKeyConstraint("suggestion_id"),
    )
    op.create_table(
        "flag_review_event",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("suggestion_id", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=512), nullable=False),
        sa.Column("step", sa.String(length=16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["suggestion_id"], ["flag_review.suggestion_id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("suggestion_id", "seq"),
    )
    with op.batch_alter_table("flag_review_event", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_flag_review_event_suggestion_id"), ["suggestion_id"], unique=False
        )
    for statement in append_only_ddl("flag_review_event", op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("flag_review_event")
    op.drop_table("flag_review")
