"""Each engine version keeps the HTI-1 source attributes it was registered with.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-03 21:00:00

Versions registered before this revision get a copy of `source_attributes.toml` as it is
at the upgrade: the nearest record of what they were registered as, and from now on a
later edit of the file no longer changes their card.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

#: The file as shipped with this release (read here, not through the app's module, so the
#: migration does not change if the module does).
_FILE = Path(__file__).resolve().parents[2] / "governance" / "source_attributes.toml"
_BUILTIN_NAMES = ("builtin", "builtin-rules")


def upgrade() -> None:
    with op.batch_alter_table("engine_version", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_attributes", sa.JSON(), nullable=True))
    table = sa.table(
        "engine_version",
        sa.column("id", sa.String),
        sa.column("engine_name", sa.String),
        sa.column("source_attributes", sa.JSON),
    )
    bind = op.get_bind()
    rows = bind.execute(sa.select(table.c.id, table.c.engine_name)).all()
    if not rows:
        return
    with _FILE.open("rb") as handle:
        engines = tomllib.load(handle)["engine"]
    for row_id, engine in rows:
        entry = "builtin-rules" if engine in _BUILTIN_NAMES else "llm"
        bind.execute(
            table.update()
            .where(table.c.id == row_id)
            .values(source_attributes=dict(engines[entry]))
        )


def downgrade() -> None:
    with op.batch_alter_table("engine_version", schema=None) as batch_op:
        batch_op.drop_column("source_attributes")
