"""PostgreSQL-only checks of the records DB against a real server.

tests/support/pg.py starts a throwaway cluster (initdb as the postgres OS user,
loopback, free port); ``pg_db_url`` is a fresh empty database per test. The
tests shared with SQLite run on both backends in tests/master/test_records.py.
Missing server binaries make these tests error out: CI installs ``postgresql``.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, inspect, select, text

from master.records import db, queries
from master.records.models import VERSION_TABLE, KernelBuild
from tests.support.recordskit import build_row

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine(pg_db_url):
    db.upgrade(pg_db_url)
    eng = db.make_engine(pg_db_url)
    yield eng
    eng.dispose()


def test_backend_is_really_postgresql(engine):
    assert engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT version()")).startswith("PostgreSQL ")
    cols = {c["name"]: c for c in inspect(engine).get_columns("kernel_builds")}
    assert cols["started_at"]["type"].timezone is True  # timestamptz
    assert db.current_revision(engine) == db.head_revision()
    assert VERSION_TABLE in inspect(engine).get_table_names()


def test_concurrent_writers_same_buildid_make_one_row(engine):
    # Two record steps racing (e.g. a retry while the first is still writing).
    ids, errors = [], []

    def write():
        try:
            ids.append(queries.insert_build(engine, build_row(buildid=314)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with engine.connect() as conn:
        rows = conn.scalar(select(func.count()).select_from(KernelBuild))
    assert len(set(ids)) == 1 and rows == 1


def test_unknown_server_database_is_a_clear_error(pg_db_url, capsys):
    from launcher import cli

    bad = pg_db_url.rsplit("/", 1)[0] + "/no_such_db"
    assert cli.main(["records", "--db", bad]) == 1
    err = capsys.readouterr().err
    assert "ktstr-ci: error: cannot open records database" in err
    assert "no_such_db" in err and "Traceback" not in err


def test_missing_server_binaries_are_an_error_not_a_skip(tmp_path, monkeypatch):
    from tests.support.pg import ENV_BIN, PgCluster, PostgresUnavailable

    monkeypatch.setenv(ENV_BIN, str(tmp_path))
    with pytest.raises(PostgresUnavailable, match="install the Debian package `postgresql`"):
        PgCluster()
