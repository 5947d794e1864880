"""Safety by age band and sex: each shown suggestion keeps the patient's band and sex
(no birth date, no identifier) and its count of medication safety-check hits.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 12:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL on the rows already shown: recorded only from now on ("not recorded" in metrics).
    with op.batch_alter_table("shown_suggestion", schema=None) as batch_op:
        batch_op.add_column(sa.Column("age_band", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("sex", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("safety_hits", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shown_suggestion", schema=None) as batch_op:
        for name in ("safety_hits", "sex", "age_band"):
            batch_op.drop_column(name)
