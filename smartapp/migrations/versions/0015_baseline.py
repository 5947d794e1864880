"""The EHR baseline: note lag and length aggregates per clinician and ISO week, and its runs.

Only aggregates: no note text, no patient or encounter id (`smartapp.baseline.models`).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 20:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import smartapp.db

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "baseline_run",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("issuer", sa.String(length=512), nullable=False),
        sa.Column("since", sa.Date(), nullable=False),
        sa.Column("go_live", sa.Date(), nullable=True),
        sa.Column("level", sa.String(length=160), nullable=False),
        sa.Column("started_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", smartapp.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("transaction_time", sa.String(length=64), nullable=False),
        sa.Column("encounters_read", sa.Integer(), nullable=False),
        sa.Column("notes_read", sa.Integer(), nullable=False),
        sa.Column("notes_counted", sa.Integer(), nullable=False),
        sa.Column("clinicians", sa.Integer(), nullable=False),
        sa.Column("weeks_stored", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_baseline_run_issuer", "baseline_run", ["issuer", "finished_at"])
    op.create_table(
        "baseline_week",
        sa.Column("issuer", sa.String(length=512), nullable=False),
        sa.Column("fhir_user", sa.String(length=256), nullable=False),
        sa.Column("week", sa.String(length=8), nullable=False),
        sa.Column("week_start", sa.Date(), nullable=False),
        sa.Column("notes", sa.Integer(), nullable=False),
        sa.Column("notes_with_lag", sa.Integer(), nullable=False),
        sa.Column("median_lag_hours", sa.Float(), nullable=True),
        sa.Column("notes_with_length", sa.Integer(), nullable=False),
        sa.Column("median_note_chars", sa.Float(), nullable=True),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["baseline_run.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("issuer", "fhir_user", "week"),
    )


def downgrade() -> None:
    op.drop_table("baseline_week")
    op.drop_index("ix_baseline_run_issuer", table_name="baseline_run")
    op.drop_table("baseline_run")
