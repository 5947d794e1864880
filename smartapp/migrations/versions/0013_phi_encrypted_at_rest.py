"""PHI encrypted at rest: the feedback outbox's payload becomes text (Fernet ciphertext).

Snapshots, comments, edits, notes and review comments were already text columns; their
values are encrypted from now on (`smartapp.db.EncryptedText`), and what was stored before
still reads. The outbox payload was JSON: stored JSON stays readable as text.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 16:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "feedback_forward",
            "payload",
            type_=sa.Text(),
            existing_type=sa.JSON(),
            postgresql_using="payload::text",
        )
    else:
        with op.batch_alter_table("feedback_forward") as batch:
            batch.alter_column("payload", type_=sa.Text(), existing_type=sa.JSON())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "feedback_forward",
            "payload",
            type_=sa.JSON(),
            existing_type=sa.Text(),
            postgresql_using="payload::json",
        )
    else:
        with op.batch_alter_table("feedback_forward") as batch:
            batch.alter_column("payload", type_=sa.JSON(), existing_type=sa.Text())
