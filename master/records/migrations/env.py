"""Alembic environment of the records database.

Driven programmatically by :func:`master.records.db.upgrade`, which passes an
open connection in ``config.attributes["connection"]``; there is no
alembic.ini. The version table is ours (``ktstr_alembic_version``) so that
Buildbot's ``alembic_version`` in a shared database is never touched.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from master.records.models import VERSION_TABLE, Base

config = context.config
target_metadata = Base.metadata


def _include_object(obj, name, type_, reflected, compare_to) -> bool:
    # In a database shared with Buildbot, autogenerate must ignore Buildbot's tables.
    if type_ == "table" and reflected and compare_to is None:
        return name in target_metadata.tables
    return True


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        include_object=_include_object,
        # SQLite cannot ALTER most things; batch mode lets later revisions work there too.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    # Fallback for the alembic command line: a URL in the config.
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
