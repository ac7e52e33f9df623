"""Alembic environment of the job store.

``slas.platform.db.upgrade`` hands a live connection in ``config.attributes["connection"]``; the
``alembic`` command line (with ``sqlalchemy.url`` set) and offline ``--sql`` mode work too.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from slas.platform.db import VERSION_TABLE
from slas.platform.schema import Base

config = context.config
target_metadata = Base.metadata
version_table = config.get_main_option("version_table") or VERSION_TABLE


def _configure(**kwargs) -> None:
    context.configure(target_metadata=target_metadata, version_table=version_table, compare_type=True, **kwargs)


def run_offline() -> None:
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _configure(connection=conn, render_as_batch=conn.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
