"""The audit trail becomes a hash chain: seq, prev_hash and hash per row, and its head.

Rows written before this migration keep no seal; the head counts them, so that `smartapp
audit verify` notices one added or removed later.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 15:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from smartapp.audit.models import chain_head_ddl

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

GENESIS = "0" * 64


def upgrade() -> None:
    # Adding columns is not an UPDATE: the append-only triggers stay in place.
    op.add_column("audit_event", sa.Column("seq", sa.Integer(), nullable=True))
    op.add_column("audit_event", sa.Column("prev_hash", sa.String(length=64), nullable=True))
    op.add_column("audit_event", sa.Column("hash", sa.String(length=64), nullable=True))
    op.create_index("ix_audit_seq", "audit_event", ["seq"], unique=True)
    head = op.create_table(
        "audit_chain",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("legacy_rows", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    legacy = op.get_bind().execute(sa.text("SELECT count(*) FROM audit_event")).scalar_one()
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS, "legacy_rows": int(legacy)}])
    for statement in chain_head_ddl(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_event_chain_head ON audit_event")
        op.execute("DROP FUNCTION IF EXISTS audit_event_chain_head()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_event_chain_head")
    op.drop_table("audit_chain")
    op.drop_index("ix_audit_seq", table_name="audit_event")
    with op.batch_alter_table("audit_event") as batch:
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
        batch.drop_column("seq")
