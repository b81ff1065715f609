"""The records tests of tests/test_records.py against a real PostgreSQL server.

tests/pg.py starts a throwaway cluster (initdb as the postgres OS user, loopback,
free port). Each test gets a fresh database through ``pg_db_url``, so the
migration tests really start from an empty database. Missing server binaries
make these tests error out: CI installs the ``postgresql`` package.
"""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

import tests.test_records as base
from master.records import db, queries
from master.records.models import VERSION_TABLE
from tests.pg import pg_cluster, pg_db_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.postgres

# test_records' fixtures, here resolved against the PostgreSQL db_url below.
engine = base.engine
history = base.history


@pytest.fixture
def db_url(pg_db_url: str) -> str:  # noqa: F811  (overrides test_records' SQLite URL)
    return pg_db_url


class TestMigrationsPg(base.TestMigrations):
    def test_backend_is_really_postgresql(self, engine):
        assert engine.dialect.name == "postgresql"
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT version()")).startswith("PostgreSQL ")
        cols = {c["name"]: c for c in inspect(engine).get_columns("kernel_builds")}
        assert cols["started_at"]["type"].timezone is True  # timestamptz
        assert db.current_revision(engine) == db.head_revision()
        assert VERSION_TABLE in inspect(engine).get_table_names()


class TestInsertPg(base.TestInsert):
    def test_concurrent_writers_same_buildid_make_one_row(self, engine):
        # Two record steps racing (e.g. a retry while the first is still writing).
        import threading

        ids, errors = [], []

        def write():
            try:
                ids.append(queries.insert_build(engine, base.build_row(buildid=314)))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(set(ids)) == 1 and base.count(engine) == 1


class TestQueriesPg(base.TestQueries):
    pass


class TestRecordsServicePg(base.TestRecordsService):
    pass


class TestCliPg(base.TestCli):
    # The missing-file case is SQLite-only (tests/test_records.py runs it); on a server,
    # an unknown database is the analogue.
    test_missing_sqlite_file_is_a_clear_error_not_a_traceback = None

    def test_unknown_server_database_is_a_clear_error(self, db_url, capsys):
        from launcher import cli

        bad = db_url.rsplit("/", 1)[0] + "/no_such_db"
        assert cli.main(["records", "--db", bad]) == 1
        err = capsys.readouterr().err
        assert "ktstr-ci: error: cannot open records database" in err
        assert "no_such_db" in err and "Traceback" not in err


def test_missing_server_binaries_are_an_error_not_a_skip(tmp_path, monkeypatch):
    from tests.pg import ENV_BIN, PgCluster, PostgresUnavailable

    monkeypatch.setenv(ENV_BIN, str(tmp_path))
    with pytest.raises(PostgresUnavailable, match="install the Debian package `postgresql`"):
        PgCluster()
