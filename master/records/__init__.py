"""The records database: one row per kernel build, one per matrix run (SQLAlchemy + alembic).

``models`` the tables, ``db`` engines/URLs/migrations, ``queries`` synchronous
reads and writes, ``service`` the Buildbot service that writes off the reactor.
Importing this package does not import Buildbot or Twisted.
"""

from master.records.db import (
    InvalidRecord,
    RecordsError,
    default_url,
    make_engine,
    upgrade,
)

__all__ = ["InvalidRecord", "RecordsError", "default_url", "make_engine", "upgrade"]
