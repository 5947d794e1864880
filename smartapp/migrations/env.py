"""Alembic environment: migrations run on the app's own engine, from `Database.upgrade()`.

https://alembic.sqlalchemy.org/en/latest/tutorial.html
"""

from __future__ import annotations

from alembic import context

from smartapp.db import Base, import_models

import_models()
target_metadata = Base.metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` run from the command line with a URL in the config
    from sqlalchemy import create_engine

    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    connection = engine.connect()

context.configure(
    connection=connection,
    target_metadata=target_metadata,
    # SQLite cannot ALTER most things in place: batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
