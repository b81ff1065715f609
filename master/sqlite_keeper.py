"""Keep one idle connection to the master's SQLite database open; sync its commits less.

Buildbot opens SQLite databases with SQLAlchemy's ``NullPool``: every
database call opens the file, runs, and closes it. SQLite in WAL mode (which
Buildbot sets) makes the close of the *last* connection a checkpoint: it copies
the write-ahead log into the database, syncs it and deletes the log. So every
step state change, log chunk and property write of every build paid a
checkpoint. Measured on this project's 2-core machine with
``bench/step_floor_bench.py`` (a build of ten ``true`` steps): 0.148 s per step
that way, 0.107 s with this connection held.

The held connection never starts a transaction (it only reads the schema once,
in autocommit mode), so it blocks no writer and no checkpoint: SQLite still
checkpoints on its own when the log reaches its threshold (1000 pages), and a
``kill -9`` of the master loses nothing a committed transaction wrote.

Every connection Buildbot's engine opens to that file also gets ``PRAGMA
synchronous=NORMAL``: in WAL mode a commit then appends to the log without an
fsync (the checkpoint still syncs). A committed transaction survives any crash
of the master process, ``kill -9`` included; only a crash of the operating
system or the power can roll back the last commits, and the database is never
corrupted (SQLite's own advice for WAL). Build state is written a dozen times
per step: the fake-kernel build of ``bench/step_floor_bench.py`` took 3.67 →
3.50 s and 3.58 → 3.39 s push → done with it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from buildbot.config.errors import error
from buildbot.util import service
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from twisted.internet import defer
from twisted.python import log

from master.parts import ConfigPart

NAME = "ktstr-sqlite-keeper"


def sqlite_file(db_url: str, basedir: str | os.PathLike[str]) -> Path | None:
    """The database file of a ``sqlite://`` URL (relative to ``basedir``), or None.

    None for any other database and for an in-memory SQLite, which has no file
    and whose one connection Buildbot already keeps.
    """
    try:
        url = make_url(db_url)
    except ArgumentError:
        return None
    if not url.drivername.startswith("sqlite"):
        return None
    database = url.database or ""
    if database in ("", ":memory:"):
        return None
    # Buildbot substitutes %(basedir)s in SQLite paths; so does this.
    database = database % {"basedir": str(basedir)}
    path = Path(database)
    return path if path.is_absolute() else Path(basedir) / path


class SqliteKeeper(service.BuildbotService):
    """Holds the idle connection described in the module docstring."""

    name = NAME
    _conn: sqlite3.Connection | None = None
    _path: Path | None = None  # the file of _conn; None exactly when _conn is

    def checkConfig(self, db_url: str) -> None:
        if not isinstance(db_url, str) or not db_url:
            error(f"{self.name}: db_url must be the master's database URL, not {db_url!r}")

    def reconfigService(self, db_url: str):
        self.db_url = db_url
        if self.running:
            self._open()
        return defer.succeed(None)

    @defer.inlineCallbacks
    def startService(self):
        yield super().startService()  # configures the service first
        self._open()
        self._sync_normal()

    @defer.inlineCallbacks
    def stopService(self):
        self._close()
        yield super().stopService()

    @property
    def held(self) -> Path | None:
        """The file whose connection is held, or None."""
        return self._path

    def _open(self) -> None:
        path = sqlite_file(self.db_url, self.master.basedir)
        if path == self.held:
            return
        self._close()
        if path is None:
            return
        try:
            # mode=rw: never create a database Buildbot has not created (upgrade-master does).
            # as_uri() escapes '?', '#' and '%' in the path, which a URI would misread.
            conn = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, isolation_level=None,
                                   check_same_thread=False)
            # The first read maps the WAL index: from here on this counts as a connection.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        except sqlite3.Error as exc:
            # Only speed is at stake: the master works as before without it.
            log.msg(f"ktstr-ci: not holding {path} open ({exc}); "
                    "every database call will checkpoint the WAL")
            return
        self._conn, self._path = conn, path

    def _sync_normal(self) -> None:
        """Have every new connection of the master's engine use synchronous=NORMAL."""
        if self.held is None:
            return  # not a SQLite file (or not openable): nothing to tune
        engine = getattr(getattr(getattr(self.master, "db", None), "pool", None), "engine", None)
        if engine is None or not engine.url.drivername.startswith("sqlite"):
            return
        if not sa.event.contains(engine.pool, "connect", sync_normal):
            sa.event.listen(engine.pool, "connect", sync_normal)

    def _close(self) -> None:
        conn, self._conn, self._path = self._conn, None, None
        if conn is not None:
            conn.close()


def sync_normal(dbapi_connection: Any, _record: Any) -> None:
    """SQLAlchemy ``connect`` listener: WAL commits without an fsync (module docstring)."""
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def config_part(db_url: str) -> ConfigPart:
    """The keeper as a service; it does nothing for a database that is not a SQLite file."""
    return ConfigPart(feature="sqlite-keeper", services=[SqliteKeeper(db_url=db_url)])
