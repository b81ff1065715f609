"""The master holds one idle connection to its SQLite database (master.sqlite_keeper).

The behaviour that matters: with the connection held, a connection that
writes and closes (as each of Buildbot's NullPool calls does) leaves the
write-ahead log in place instead of checkpointing and deleting it; the held
connection blocks no writer; it never creates a database; stopping releases it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from buildbot.config.errors import ConfigErrors

from master.sqlite_keeper import SqliteKeeper, config_part, sqlite_file, sync_normal


def wal_db(path: Path) -> Path:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE steps (id INTEGER PRIMARY KEY, state TEXT)")
    conn.close()
    return path


def write_and_close(path: Path, state: str) -> None:
    """What one Buildbot database call does under NullPool: open, write, commit, close."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO steps (state) VALUES (?)", (state,))
    conn.close()


def keeper(db_url: str, basedir: Path) -> SqliteKeeper:
    svc = SqliteKeeper(db_url=db_url)
    svc.parent = type("Parent", (), {"master": type("M", (), {"basedir": str(basedir)})()})()
    svc.reconfigService(**svc._config_kwargs)
    return svc


def started(svc: SqliteKeeper) -> SqliteKeeper:
    out: list[Any] = []
    svc.startService().addBoth(out.append)
    assert out == [None]
    return svc


def stopped(svc: SqliteKeeper) -> None:
    out: list[Any] = []
    svc.stopService().addBoth(out.append)
    assert out == [None]


@pytest.mark.parametrize(("url", "want"), [
    ("sqlite:///state.sqlite", "BASE/state.sqlite"),
    ("sqlite:////srv/master/state.sqlite", "/srv/master/state.sqlite"),
    ("sqlite:///%(basedir)s/db/state.sqlite", "BASE/db/state.sqlite"),
    ("sqlite://", None),
    ("sqlite:///:memory:", None),
    ("postgresql://buildbot@localhost/buildbot", None),
    ("not a url", None),
])
def test_sqlite_file_resolves_like_buildbot(tmp_path: Path, url: str, want: str | None) -> None:
    got = sqlite_file(url, tmp_path)
    assert got == (None if want is None else Path(want.replace("BASE", str(tmp_path))))


def test_without_a_held_connection_every_close_checkpoints_the_wal(tmp_path: Path) -> None:
    # The cost this module removes, shown on SQLite itself: the log goes with every close.
    db = wal_db(tmp_path / "state.sqlite")
    write_and_close(db, "started")
    assert not Path(f"{db}-wal").exists()


def test_held_connection_keeps_the_wal_across_closes(tmp_path: Path) -> None:
    db = wal_db(tmp_path / "state.sqlite")
    svc = started(keeper("sqlite:///state.sqlite", tmp_path))
    assert svc.held == db
    for state in ("started", "running", "done"):
        write_and_close(db, state)
    assert Path(f"{db}-wal").exists(), "a close checkpointed: the connection is not held"
    # Nothing is lost or blocked: a fresh connection sees every committed row.
    conn = sqlite3.connect(db)
    assert [r[0] for r in conn.execute("SELECT state FROM steps ORDER BY id")] == [
        "started", "running", "done"]
    conn.close()
    stopped(svc)
    assert svc.held is None
    # Released: the keeper's close was the last one and checkpointed the log away.
    assert not Path(f"{db}-wal").exists()


def test_held_connection_blocks_no_writer(tmp_path: Path) -> None:
    db = wal_db(tmp_path / "state.sqlite")
    svc = started(keeper(f"sqlite:///{db}", tmp_path))
    conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")  # would raise 'database is locked' at once if held
    conn.execute("INSERT INTO steps (state) VALUES ('x')")
    conn.execute("COMMIT")
    assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0  # not busy
    conn.close()
    stopped(svc)


def test_never_creates_a_database(tmp_path: Path) -> None:
    svc = started(keeper("sqlite:///state.sqlite", tmp_path))
    assert svc.held is None
    assert not (tmp_path / "state.sqlite").exists()
    stopped(svc)


def test_other_databases_are_left_alone(tmp_path: Path) -> None:
    svc = started(keeper("postgresql://buildbot@localhost/buildbot", tmp_path))
    assert svc.held is None
    stopped(svc)


def test_reconfig_to_another_file_moves_the_connection(tmp_path: Path) -> None:
    a = wal_db(tmp_path / "a.sqlite")
    b = wal_db(tmp_path / "b.sqlite")
    svc = started(keeper("sqlite:///a.sqlite", tmp_path))
    assert svc.held == a
    svc.reconfigService(db_url="sqlite:///b.sqlite")
    assert svc.held == b
    write_and_close(a, "after")
    assert not Path(f"{a}-wal").exists(), "a.sqlite is still held"
    stopped(svc)


def test_empty_url_is_a_config_error() -> None:
    with pytest.raises(ConfigErrors, match="db_url must be"):
        SqliteKeeper(db_url="")


def test_config_part_is_one_named_service() -> None:
    part = config_part("sqlite:///state.sqlite")
    assert [s.name for s in part.services] == ["ktstr-sqlite-keeper"]


def test_a_path_with_uri_characters_is_held(tmp_path: Path) -> None:
    base = tmp_path / "odd?dir#50%"
    base.mkdir()
    db = wal_db(base / "state.sqlite")
    svc = started(keeper("sqlite:///state.sqlite", base))
    assert svc.held == db
    write_and_close(db, "x")
    assert Path(f"{db}-wal").exists()
    stopped(svc)


def synchronous(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.exec_driver_sql("PRAGMA synchronous").scalar_one()


def keeper_of(engine: sa.Engine, basedir: Path) -> SqliteKeeper:
    """A keeper whose master's database engine is ``engine``, as Buildbot's DBConnector holds it."""
    svc = keeper(str(engine.url), basedir)
    svc.master.db = type("DB", (), {"pool": type("Pool", (), {"engine": engine})()})()
    return svc


def test_the_masters_connections_commit_without_fsync(tmp_path: Path) -> None:
    db = wal_db(tmp_path / "state.sqlite")
    engine = sa.create_engine(f"sqlite:///{db}", poolclass=sa.pool.NullPool)
    assert synchronous(engine) == 2  # FULL: SQLite's default, an fsync per commit
    svc = started(keeper_of(engine, tmp_path))
    assert synchronous(engine) == 1  # NORMAL, on every new connection (NullPool)
    assert synchronous(engine) == 1
    stopped(started(keeper_of(engine, tmp_path)))  # a second keeper adds no second listener
    sa.event.remove(engine.pool, "connect", sync_normal)
    assert not sa.event.contains(engine.pool, "connect", sync_normal)
    assert synchronous(engine) == 2
    stopped(svc)
    # The held connection never opened a transaction: a writer is not blocked.
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO steps (state) VALUES ('x')")


def test_an_in_memory_database_is_not_tuned(tmp_path: Path) -> None:
    engine = sa.create_engine("sqlite://")
    svc = started(keeper_of(engine, tmp_path))
    assert svc.held is None
    assert not sa.event.contains(engine.pool, "connect", sync_normal)
