"""The records database: one row per kernel build, one per matrix run (SQLAlchemy + alembic).

``models`` the tables, ``db`` engines/URLs/migrations, ``rows`` the check of
a row before it is written, ``queries`` synchronous reads and writes,
``retry`` which errors are worth retrying and the backoff,
``spool`` rows waiting for the database (files in the master's basedir),
``service`` the Buildbot service that writes off the reactor, ``unrecorded``
its rows for builds that ended without their record step, ``part`` the
records' part of the master's configuration (the service and the dashboard).
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
