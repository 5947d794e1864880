"""Saved notes gain a kind: the clinician's note, or the patient's after-visit summary.

The after-visit summary is a document of its own (its own DocumentReference, outbox row
and revisions), kept beside the visit's note under a key derived from the visit's.
Existing rows are clinicians' notes.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 16:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("saved_note", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("document_kind", sa.String(length=32), nullable=False, server_default="note")
        )


def downgrade() -> None:
    with op.batch_alter_table("saved_note", schema=None) as batch_op:
        batch_op.drop_column("document_kind")
