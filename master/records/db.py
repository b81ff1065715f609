"""Engines, the default URL and programmatic alembic upgrades of the records database."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.pool import StaticPool

from ktstr_steps.errors import KtstrError
from ktstr_steps.paths import REPO_ROOT
from master.records.models import VERSION_TABLE

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
ENV_URL = "KTSTR_CI_RECORDS_URL"


class RecordsError(KtstrError):
    """A records database problem the user can act on (bad URL, missing file, old schema)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="records")


class InvalidRecord(RecordsError, ValueError):
    """A row or matrix run that does not fit the schema; nothing was written."""


def default_url() -> str:
    """``$KTSTR_CI_RECORDS_URL``, else the SQLite file ``var/records.sqlite`` under the checkout."""
    env = os.environ.get(ENV_URL)
    if env:
        return env
    return f"sqlite:///{REPO_ROOT / 'var' / 'records.sqlite'}"


def safe_url(url: str | URL) -> str:
    """The URL with any password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def parse_url(url: str | URL) -> URL:
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise RecordsError(
            f"records database URL {url!r} is not a SQLAlchemy URL "
            "(expected e.g. sqlite:////path/records.sqlite or postgresql+psycopg2://user@host/db)"
        ) from exc


def sqlite_path(url: str | URL) -> Path | None:
    """The file of a file-backed SQLite URL, else None (server DBs and ``sqlite://``)."""
    u = parse_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    database = u.database
    if str(u.query.get("uri", "")).lower() in ("true", "1") and database.startswith("file:"):
        # SQLite URI form (sqlite:///file:/path/x.sqlite?mode=ro&uri=true): the file is
        # the path part; "file:" must not become a directory in the current one.
        if u.query.get("mode") == "memory":
            return None
        database = database[len("file:") :]
        for prefix in ("//localhost/", "///"):
            if database.startswith(prefix):
                database = "/" + database[len(prefix) :]
    return Path(database)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL: the dashboard and `ktstr-ci records` read while the service writes.
    cur.execute("PRAGMA journal_mode=WAL")
    # SQLite ignores FOREIGN KEY clauses unless asked per connection.
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(
    url: str | URL | None = None, *, must_exist: bool = False, busy_timeout: float = 30.0
) -> Engine:
    """An engine for the records DB.

    ``must_exist`` is for readers (CLI, dashboard): a missing SQLite file is an
    error with a hint instead of an empty database silently created somewhere.
    Writers get the file's directory created. ``busy_timeout`` is how long one
    SQLite statement waits for another process's lock, and on a server how long
    connecting may take, before the call fails (the records service retries
    with its own, shorter, value).
    """
    u = parse_url(url if url is not None else default_url())
    backend = u.get_backend_name()
    kwargs: dict[str, Any] = {"future": True}
    path = sqlite_path(u)
    if backend == "sqlite":
        if path is None:
            # One shared in-memory DB for every thread (the default pool gives one per thread).
            kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            if must_exist and not path.exists():
                raise RecordsError(
                    f"no records database at {path}: the master creates it when it starts "
                    f"(or pass --db URL / set {ENV_URL})"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": busy_timeout}
    else:
        kwargs["pool_pre_ping"] = True
        if backend == "postgresql" and u.get_driver_name() in ("psycopg2", "psycopg"):
            # libpq's own default waits for the TCP timeout on an unreachable host.
            kwargs["connect_args"] = {"connect_timeout": max(1, round(busy_timeout))}
    try:
        engine = create_engine(u, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        raise RecordsError(f"no database driver for {safe_url(u)}: {exc}") from exc
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The schema revision stored in the DB, or None when it has never been migrated."""
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return ctx.get_current_revision()
    except OperationalError as exc:
        raise RecordsError(
            f"cannot open records database {safe_url(engine.url)}: {exc.orig}"
        ) from exc


def upgrade(url_or_engine: str | URL | Engine | None = None) -> str:
    """Migrate the records schema to head, programmatically (no alembic CLI); returns head.

    Safe to call on every start: an up-to-date DB is left alone.
    """
    engine = url_or_engine if isinstance(url_or_engine, Engine) else make_engine(url_or_engine)
    cfg = _alembic_config()
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except OperationalError as exc:
        raise RecordsError(
            f"cannot migrate records database {safe_url(engine.url)}: {exc.orig}"
        ) from exc
    finally:
        if engine is not url_or_engine:
            engine.dispose()
    return head_revision()


def check_schema(engine: Engine) -> None:
    """Raise a clear error unless the DB carries the current records schema (for readers)."""
    rev = current_revision(engine)
    if rev is None:
        tables = set(inspect(engine).get_table_names())
        what = "an empty database" if not tables else "not a ktstr-ci records database"
        raise RecordsError(
            f"{safe_url(engine.url)} is {what} (no {VERSION_TABLE}); "
            "start the master once or run `ktstr-ci records --upgrade`"
        )
    head = head_revision()
    if rev != head:
        raise RecordsError(
            f"records database {safe_url(engine.url)} is at schema {rev}, this code expects "
            f"{head}; run `ktstr-ci records --upgrade`"
        )
