"""Records DB: migrations, writes, validation, queries, the Twisted service, the CLI.

Every test that takes ``db_url`` runs twice: on SQLite and on a real PostgreSQL
server (tests/support/pg.py starts a throwaway cluster; those runs carry the
``postgres`` mark). tests/master/test_records_pg.py holds the PostgreSQL-only checks.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from buildbot.util.service import BuildbotServiceManager, MasterService
from sqlalchemy import func, inspect, select, text
from twisted.internet import defer
from twisted.trial import unittest

from launcher import cli
from master.records import db, queries
from master.records.models import VERSION_TABLE, Base, KernelBuild
from master.records.rows import row_from_result, validate_build_row
from master.records.service import (
    SERVICE_NAME,
    RecordsService,
    RowSpooled,
    get_records_service,
)
from tests.support.recordskit import T0, build_row

# The newest migration: the schema the code expects.
HEAD = "0003_build_identity"

# The build result object of docs/contracts.md, as `phase summary --json` prints it.
RESULT = {
    "ok": True,
    "outcome": "cached",
    "cache_key": "local-1a2b3c4-x86_64-kc0123abcd",
    "entry_dir": "/root/.cache/ktstr/kernels/local-1a2b3c4-x86_64-kc0123abcd",
    "image_path": "/root/.cache/ktstr/kernels/local-1a2b3c4-x86_64-kc0123abcd/bzImage",
    "config_hash": "89abcdef",
    "kconfig_hash": "0123abcd",
    "extra_kconfig_hash": None,
    "dirty": False,
    "is_git": True,
    "git_hash": "1a2b3c4",
    "version": "6.12.3",
    "profile": "tiny",
    "make_jobs": 2,
    "llcs": [0],
    "llc_cpus": [0, 1],
    "make_warnings": 3,
    "overrides": [{"symbol": "CONFIG_X", "was": "=y", "now": "is not set"}],
    "dropped": [{"line": "CONFIG_Y=y", "final_state": "# CONFIG_Y is not set"}, {"line": "b"}],
    "warnings": [],
    "errors": [],
    "phases": {"reserve": 0.01, "lookup": 0.0, "configure": 1.2, "make": 30.5, "store": 0.4},
}


def count(engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(KernelBuild))


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'var' / 'records.sqlite'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, sqlite_url) -> str:
    """The same test on both backends; PostgreSQL gets a fresh empty database per test."""
    if request.param == "sqlite":
        return sqlite_url
    return request.getfixturevalue("pg_db_url")


@pytest.fixture
def engine(db_url):
    db.upgrade(db_url)
    eng = db.make_engine(db_url)
    yield eng
    eng.dispose()


# ------------------------------------------------------------------ migrations


class TestMigrations:
    def test_upgrade_empty_db_creates_tables_with_own_version_table(self, db_url):
        assert db.upgrade(db_url) == db.head_revision() == HEAD
        eng = db.make_engine(db_url)
        try:
            names = set(inspect(eng).get_table_names())
            assert {"kernel_builds", "matrix_runs", VERSION_TABLE} <= names
            # Buildbot's alembic table name is left alone.
            assert "alembic_version" not in names
            assert db.current_revision(eng) == HEAD
            idx = {i["name"] for i in inspect(eng).get_indexes("kernel_builds")}
            assert {"ix_kernel_builds_branch_started_at", "ix_kernel_builds_started_at"} <= idx
        finally:
            eng.dispose()

    def test_upgrade_twice_is_a_no_op_and_keeps_rows(self, engine, db_url):
        queries.insert_build(engine, build_row(buildid=1))
        assert db.upgrade(db_url) == HEAD
        assert count(engine) == 1

    def test_models_match_migrations(self, engine):
        # A model change without a migration would show up here as a diff.
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = [
                d
                for d in compare_metadata(ctx, Base.metadata)
                if not (d[0] == "remove_table" and d[1].name == VERSION_TABLE)
            ]
        assert diffs == []

    def test_shares_a_database_with_buildbots_alembic_table(self, db_url):
        eng = db.make_engine(db_url)
        try:
            with eng.begin() as conn:
                conn.execute(
                    text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
                )
                conn.execute(
                    text("INSERT INTO alembic_version VALUES ('067_v4.3_add_codebase_data')")
                )
            db.upgrade(eng)
            with eng.connect() as conn:
                assert conn.scalar(text("SELECT version_num FROM alembic_version")) == (
                    "067_v4.3_add_codebase_data"
                )
            assert db.current_revision(eng) == HEAD
        finally:
            eng.dispose()

    def test_old_schema_upgrades_keeps_rows_and_stores_long_git_names_whole(self, db_url):
        # A database of the first release: its rows survive the upgrade unchanged, and
        # afterwards git names longer than the old VARCHAR limits are stored whole.
        from alembic import command

        eng = db.make_engine(db_url)
        try:
            cfg = db._alembic_config()
            with eng.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "0001_initial")
            assert db.current_revision(eng) == "0001_initial"
            old_branch = "feature/" + "a" * 240  # fits the old String(255)
            with eng.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO kernel_builds (buildid, branch, builder, kernel_outcome, "
                        "result, make_s) VALUES (1, :b, 'linux-tiny', 'cached', 'success', 30.5)"
                    ),
                    {"b": old_branch},
                )
            assert db.upgrade(eng) == HEAD
            old = queries.get_build(eng, buildid=1)
            assert (old["branch"], old["builder"], old["kernel_outcome"], old["make_s"]) == (
                old_branch, "linux-tiny", "cached", 30.5
            )
            long_branch = "topic/" + "/".join(["sched-ext-long-branch-name"] * 15)
            assert len(long_branch) > 400
            label = f"branch:linux/{long_branch}"
            key = f"{long_branch.replace('/', '_')}-git-1a2b3c4-x86_64-kc0123abcd"
            queries.insert_build(eng, build_row(
                buildid=2, branch=long_branch, kernel_version=label, cache_key=key,
                builder="poller-" + "x" * 250,
            ))
            new = queries.get_build(eng, buildid=2)
            assert new["branch"] == long_branch
            assert new["kernel_version"] == label and new["cache_key"] == key
            assert [r["buildid"] for r in queries.branch_history(eng, long_branch)] == [2]
            cols = {c["name"]: c["type"] for c in inspect(eng).get_columns("kernel_builds")}
            for name in ("branch", "builder", "kernel_version", "cache_key"):
                assert getattr(cols[name], "length", None) is None, name
        finally:
            eng.dispose()

    def test_check_schema_rejects_unmigrated_db(self, db_url):
        eng = db.make_engine(db_url)
        try:
            with pytest.raises(db.RecordsError, match="empty database"):
                db.check_schema(eng)
        finally:
            eng.dispose()

    def test_bad_url_is_a_clear_error(self):
        with pytest.raises(db.RecordsError, match="not a SQLAlchemy URL"):
            db.make_engine("records.sqlite")

    def test_default_url_under_checkout_or_env(self, monkeypatch):
        monkeypatch.delenv(db.ENV_URL, raising=False)
        from ktstr_steps.paths import REPO_ROOT

        assert db.default_url() == f"sqlite:///{REPO_ROOT}/var/records.sqlite"
        monkeypatch.setenv(db.ENV_URL, "postgresql+psycopg2://ci@db/records")
        assert db.default_url() == "postgresql+psycopg2://ci@db/records"


# ------------------------------------------------------------------ writes


class TestInsert:
    def test_insert_returns_id_and_round_trips(self, engine):
        rid = queries.insert_build(
            engine, build_row(buildid=10, phases={"make": 30.5, "configure": 1.25}, dirty=False)
        )
        row = queries.get_build(engine, id=rid)
        assert row["buildid"] == 10 and row["branch"] == "main"
        assert row["make_s"] == 30.5 and row["configure_s"] == 1.25 and row["store_s"] is None
        assert row["started_at"] == T0 and row["started_at"].tzinfo is not None
        assert row["dirty"] is False

    def test_same_buildid_updates_instead_of_duplicating(self, engine):
        first = queries.insert_build(engine, build_row(buildid=7, kernel_outcome=None, result=None))
        again = queries.insert_build(
            engine, {"buildid": 7, "kernel_outcome": "cancelled", "result": "cancelled"}
        )
        assert again == first
        assert count(engine) == 1
        row = queries.get_build(engine, buildid=7)
        assert row["kernel_outcome"] == "cancelled" and row["result"] == "cancelled"
        assert row["branch"] == "main"  # columns the retry did not send are kept

    def test_insert_only_never_overwrites_and_is_overwritten(self, engine):
        # replace=False: the records service's row for a build that ended without its
        # record step; the step's row (replace=True) wins whichever comes first.
        step = queries.insert_build(engine, build_row(buildid=8, kernel_outcome="cached"))
        same = queries.insert_build(
            engine, {"buildid": 8, "kernel_outcome": "interrupted", "result": "retry"},
            replace=False,
        )
        assert same == step and queries.get_build(engine, buildid=8)["kernel_outcome"] == "cached"
        first = queries.insert_build(
            engine, {"buildid": 9, "kernel_outcome": "interrupted"}, replace=False
        )
        assert queries.insert_build(engine, build_row(buildid=9)) == first
        assert queries.get_build(engine, buildid=9)["kernel_outcome"] == "cached"
        assert count(engine) == 2
        assert queries.recorded_buildids(engine, [7, 8, 9, *range(1000, 1700)]) == {8, 9}

    def test_rows_without_buildid_are_separate(self, engine):
        a = queries.insert_build(engine, build_row())
        b = queries.insert_build(engine, build_row())
        assert a != b and count(engine) == 2

    def test_conveniences_cpulist_result_int_epoch_iso(self, engine):
        rid = queries.insert_build(
            engine,
            build_row(
                llc_cpus=[0, 1, 2, 3, 8],
                result=1,
                started_at=T0.timestamp(),
                finished_at="2025-06-01T12:06:00+00:00",
            ),
        )
        row = queries.get_build(engine, id=rid)
        assert row["llc_cpus"] == "0-3,8"
        assert row["result"] == "warnings"
        assert row["started_at"] == T0
        assert row["finished_at"] == T0 + dt.timedelta(minutes=6)

    @pytest.mark.parametrize(
        ("bad", "message"),
        [
            ({"bogus": 1}, "unknown build record key.*bogus"),
            ({"kernel_outcome": "exploded"}, "kernel_outcome: unknown outcome 'exploded'"),
            ({"result": "great"}, "result: unknown Buildbot result 'great'"),
            ({"result": 9}, "unknown Buildbot result 9"),
            ({"make_jobs": "2"}, "make_jobs: expected an integer"),
            ({"make_jobs": True}, "make_jobs: expected an integer"),
            ({"make_s": -1}, "make_s: expected non-negative"),
            ({"phases": {"link": 1.0}}, "unknown phase 'link'"),
            ({"dirty": "no"}, "dirty: expected true or false"),
            ({"started_at": "yesterday"}, "started_at: expected a datetime"),
            ({"config_hash": "x" * 17}, "config_hash: longer than 16"),
            ({"llc_cpus": [0, -1]}, "llc_cpus: expected CPU ids"),
        ],
    )
    def test_bad_rows_rejected_clearly_and_nothing_written(self, engine, bad, message):
        queries.insert_build(engine, build_row(buildid=1))
        with pytest.raises(db.InvalidRecord, match=message):
            queries.insert_build(engine, build_row(buildid=2, **bad))
        assert count(engine) == 1
        assert queries.get_build(engine, buildid=2) is None

    def test_all_problems_named_at_once(self, engine):
        with pytest.raises(db.InvalidRecord) as ei:
            queries.insert_build(engine, {"make_jobs": "x", "kernel_outcome": "nope"})
        assert "make_jobs" in str(ei.value) and "kernel_outcome" in str(ei.value)

    def test_not_a_mapping(self, engine):
        with pytest.raises(db.InvalidRecord, match="must be a mapping"):
            queries.insert_build(engine, [("branch", "main")])

    def test_unknown_matrix_run_rejected(self, engine):
        with pytest.raises(db.InvalidRecord, match="rejected by the database"):
            queries.insert_build(engine, build_row(matrix_run_id=4242))
        assert count(engine) == 0

    def test_row_from_result_object(self, engine):
        row = row_from_result(RESULT, buildid=5, branch="main", worker="h-llc0")
        rid = queries.insert_build(engine, row)
        got = queries.get_build(engine, id=rid)
        assert got["cache_key"] == RESULT["cache_key"]
        assert got["kernel_outcome"] == "cached"
        assert got["revision"] == "1a2b3c4" and got["kernel_version"] == "6.12.3"
        assert got["llc_cpus"] == "0-1" and got["llc_index"] == 0
        assert got["overrides_count"] == 1 and got["dropped_count"] == 2
        assert got["make_s"] == 30.5 and got["compile_commands_s"] is None
        assert got["make_warnings"] == 3 and got["error"] is None

    def test_row_from_failed_result_keeps_errors_and_overrides(self):
        res = dict(
            RESULT, ok=False, outcome="failed", errors=[{"kind": "make-failed", "message": "x"}]
        )
        row = row_from_result(res, kernel_outcome="cancelled")
        assert row["error"] == "make-failed: x"
        assert row["kernel_outcome"] == "cancelled"  # the step's word wins


# ------------------------------------------------------------------ queries


@pytest.fixture
def history(engine):
    rows = [
        build_row(buildid=1, branch="main", kernel_outcome="cached", cache_key="k1",
                  config_hash="aaaaaaaa", started_at=T0),
        build_row(buildid=2, branch="main", kernel_outcome="cache-hit", cache_key="k1",
                  started_at=T0 + dt.timedelta(hours=1)),
        build_row(buildid=3, branch="dev", kernel_outcome="failed", result="failure",
                  error="make-failed: oops", started_at=T0 + dt.timedelta(days=1)),
        build_row(buildid=4, branch="dev", kernel_outcome="dirty-not-cached", dirty=True,
                  cache_key="k2", started_at=T0 + dt.timedelta(days=1, hours=2)),
        build_row(buildid=5, branch="main", kernel_outcome="cached", cache_key="k3",
                  started_at=T0 + dt.timedelta(days=2)),
    ]  # fmt: skip
    for r in rows:
        queries.insert_build(engine, r)
    return engine


class TestQueries:
    def test_recent_builds_newest_first_with_limit(self, history):
        rows = queries.recent_builds(history, limit=3)
        assert [r["buildid"] for r in rows] == [5, 4, 3]

    def test_recent_builds_of_a_branch(self, history):
        assert [r["buildid"] for r in queries.recent_builds(history, 10, branch="dev")] == [4, 3]
        assert [r["buildid"] for r in queries.branch_history(history, "main")] == [5, 2, 1]
        assert queries.branch_history(history, "nope") == []

    def test_bad_limit(self, history):
        with pytest.raises(db.InvalidRecord, match="limit"):
            queries.recent_builds(history, limit=0)

    def test_outcome_counts(self, history):
        assert queries.outcome_counts(history) == {
            "cached": 2, "cache-hit": 1, "failed": 1, "dirty-not-cached": 1,
        }  # fmt: skip
        assert queries.outcome_counts(history, branch="dev") == {"failed": 1, "dirty-not-cached": 1}
        since = T0 + dt.timedelta(days=1, hours=1)
        assert queries.outcome_counts(history, since=since) == {"dirty-not-cached": 1, "cached": 1}

    def test_outcome_trend_has_every_day(self, history):
        trend = queries.outcome_trend(history, days=4, now=T0 + dt.timedelta(days=2, hours=3))
        assert [d["day"] for d in trend] == ["2025-05-31", "2025-06-01", "2025-06-02", "2025-06-03"]
        assert [d["total"] for d in trend] == [0, 2, 2, 1]
        assert trend[1]["outcomes"] == {"cached": 1, "cache-hit": 1}

    def test_branches_overview(self, history):
        got = queries.branches(history)
        assert [(b["branch"], b["builds"], b["last"]["buildid"]) for b in got] == [
            ("main", 3, 5),
            ("dev", 2, 4),
        ]

    def test_cache_entries_only_stored_or_hit(self, history):
        entries = queries.cache_entries(history)
        assert [(e["cache_key"], e["uses"]) for e in entries] == [("k3", 1), ("k1", 2)]
        k1 = entries[1]["last_build"]
        assert k1["buildid"] == 2  # the newest build that used it

    def test_matrix_run_totals_and_grid(self, engine):
        run = queries.start_matrix_run(
            engine, versions=["6.12.3", "6.6.60"], profiles=["tiny", "preempt"], spec="6.6..6.12"
        )
        cells = [
            ("6.12.3", "tiny", "cached", "success"),
            ("6.12.3", "preempt", "cache-hit", "success"),
            ("6.6.60", "tiny", "failed", "failure"),
        ]
        for i, (v, p, o, r) in enumerate(cells):
            queries.insert_build(
                engine,
                build_row(buildid=100 + i, kernel_version=v, profile=p, kernel_outcome=o,
                          result=r, matrix_run_id=run),
            )  # fmt: skip
        done = queries.finish_matrix_run(engine, run)
        assert (done["cells"], done["built"], done["cache_hits"], done["failed"]) == (4, 1, 1, 1)
        assert done["finished_at"] is not None
        grid = queries.matrix_grid(engine, run)
        assert grid["cells"]["6.12.3"]["preempt"]["kernel_outcome"] == "cache-hit"
        assert grid["cells"]["6.6.60"]["preempt"] is None
        assert grid["run"]["versions"] == ["6.12.3", "6.6.60"]
        assert queries.matrix_runs(engine)[0]["id"] == run
        assert queries.matrix_grid(engine, run + 99) is None

    def test_matrix_run_bad_input(self, engine):
        with pytest.raises(db.InvalidRecord, match="versions"):
            queries.start_matrix_run(engine, versions="6.12", profiles=["tiny"])
        with pytest.raises(db.InvalidRecord, match="duplicate"):
            queries.start_matrix_run(engine, versions=["6.12", "6.12"], profiles=["tiny"])
        run = queries.start_matrix_run(engine, versions=["6.12"], profiles=["tiny"])
        with pytest.raises(db.InvalidRecord, match="unknown matrix total"):
            queries.finish_matrix_run(engine, run, totals={"wins": 1})
        with pytest.raises(db.InvalidRecord, match="no matrix run"):
            queries.finish_matrix_run(engine, run + 1)


# ------------------------------------------------------------------ service


class _StubMaster(MasterService):
    """Just enough master for BuildbotServiceManager: c['services'] reconfig needs objectids."""

    def __init__(self) -> None:
        super().__init__()

        class _State:
            def getObjectId(self, name, class_name):
                return defer.succeed(1)

        class _Db:
            state = _State()

        self.db = _Db()
        self.service_manager = BuildbotServiceManager()
        self.service_manager.setServiceParent(self)


class _Config:
    def __init__(self, services):
        self.services = services


class TestRecordsService(unittest.TestCase):
    """The service on the real reactor (trial spins it; runs under plain pytest)."""

    # A unittest.TestCase cannot take a parametrized fixture: the PostgreSQL
    # run is the subclass below.
    @pytest.fixture(autouse=True)
    def _db(self, sqlite_url, tmp_path):
        self.url = sqlite_url
        self.tmp = tmp_path

    @defer.inlineCallbacks
    def setUp(self):
        self.svc = RecordsService(db_url=self.url)
        yield self.svc.startService()
        # Only if still running: once buildbot.test is imported anywhere in the
        # session, its service checks assert on a second stopService().
        self.addCleanup(lambda: self.svc.stopService() if self.svc.running else None)

    @defer.inlineCallbacks
    def test_record_runs_off_the_reactor_thread(self):
        seen = []
        real = queries.insert_build

        def spy(engine, row):
            seen.append(threading.current_thread())
            return real(engine, row)

        self.patch(queries, "insert_build", spy)
        rid = yield self.svc.record(build_row(buildid=42))
        self.assertEqual(len(seen), 1)
        self.assertIsNot(seen[0], threading.main_thread())
        self.assertIs(threading.current_thread(), threading.main_thread())
        row = yield self.svc.query(queries.get_build, id=rid)
        self.assertEqual(row["buildid"], 42)

    @defer.inlineCallbacks
    def test_retried_record_step_does_not_duplicate(self):
        a = yield self.svc.record(build_row(buildid=9, result=None))
        b = yield self.svc.record(build_row(buildid=9, result="success"))
        self.assertEqual(a, b)
        rows = yield self.svc.query(queries.recent_builds, 10)
        self.assertEqual([r["result"] for r in rows], ["success"])

    @defer.inlineCallbacks
    def test_bad_row_fails_the_deferred_clearly(self):
        err = yield self.assertFailure(
            self.svc.record(build_row(kernel_outcome="weird")), db.InvalidRecord
        )
        self.assertIn("kernel_outcome: unknown outcome 'weird'", str(err))
        rows = yield self.svc.query(queries.recent_builds, 10)
        self.assertEqual(rows, [])

    @defer.inlineCallbacks
    def test_matrix_run_through_the_service(self):
        run = yield self.svc.start_matrix_run(versions=["6.12.3"], profiles=["tiny"], buildid=77)
        yield self.svc.record(build_row(buildid=78, kernel_outcome="cache-hit", matrix_run_id=run))
        done = yield self.svc.finish_matrix_run(run)
        self.assertEqual((done["cells"], done["cache_hits"], done["buildid"]), (1, 1, 77))

    @defer.inlineCallbacks
    def test_stopped_service_refuses_clearly(self):
        yield self.svc.stopService()
        err = yield self.assertFailure(self.svc.record(build_row()), db.RecordsError)
        self.assertIn("not running", str(err))

    @defer.inlineCallbacks
    def test_registered_via_c_services_and_found_and_reconfigured(self):
        master = _StubMaster()
        yield master.startService()
        self.addCleanup(master.stopService)
        self.assertIsNone(get_records_service(master))
        yield master.service_manager.reconfigServiceWithBuildbotConfig(
            _Config([RecordsService(db_url=self.url)])
        )
        svc = get_records_service(master)
        self.assertIsInstance(svc, RecordsService)
        self.assertIs(master.service_manager.namedServices[SERVICE_NAME], svc)
        yield svc.record(build_row(buildid=1))
        # Reconfig with a new URL moves writes to the new database without a restart.
        other = f"sqlite:///{self.tmp / 'other.sqlite'}"
        yield master.service_manager.reconfigServiceWithBuildbotConfig(
            _Config([RecordsService(db_url=other)])
        )
        self.assertIs(get_records_service(master), svc)
        yield svc.record(build_row(buildid=2))
        eng = db.make_engine(other)
        try:
            self.assertEqual([r["buildid"] for r in queries.recent_builds(eng, 5)], [2])
        finally:
            eng.dispose()

    @defer.inlineCallbacks
    def test_unreachable_db_at_start_does_not_stop_the_master(self):
        # A records database that is down when the master starts must not keep the
        # master (and every build) down: the service starts, says why, and spools.
        svc = RecordsService(
            db_url="postgresql+psycopg2://nobody@127.0.0.1:1/none",
            spool_dir=str(self.tmp / "spool"),
            retry_budget=0.3,
        )
        yield svc.startService()
        self.addCleanup(svc.stopService)
        self.assertIsNone(svc.engine)
        status = svc.status()
        self.assertFalse(status["open"])
        self.assertIn("Connection refused", status["last_error"])
        err = yield self.assertFailure(svc.record(build_row(buildid=5)), RowSpooled)
        self.assertIn("connect", err.why)
        self.assertEqual(svc.status()["spooled"], 1)

    @defer.inlineCallbacks
    def test_missing_driver_still_fails_start_clearly(self):
        svc = RecordsService(db_url="postgresql+nosuchdriver://nobody@127.0.0.1:1/none")
        err = yield self.assertFailure(svc.startService(), db.RecordsError)
        self.assertIn("no database driver", str(err))
        self.assertIsNone(svc.engine)


# ------------------------------------------------------------------ CLI


@pytest.mark.postgres
class TestRecordsServicePg(TestRecordsService):
    @pytest.fixture(autouse=True)
    def _db(self, pg_db_url, tmp_path):
        self.url = pg_db_url
        self.tmp = tmp_path


class TestCli:
    def test_text_table(self, history, db_url, capsys):
        assert cli.main(["records", "--db", db_url, "--limit", "2"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].split()[:3] == ["ID", "BUILD", "BRANCH"]
        assert len(out) == 3
        assert out[1].split()[1:3] == ["5", "main"] and "cached" in out[1]
        assert out[2].split()[1:3] == ["4", "dev"] and "dirty-not-cached" in out[2]

    def test_json_one_object(self, history, db_url, capsys):
        assert cli.main(["records", "--db", db_url, "--branch", "dev", "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert list(doc) == ["builds"]
        assert [b["buildid"] for b in doc["builds"]] == [4, 3]
        assert doc["builds"][1]["error"] == "make-failed: oops"
        assert dt.datetime.fromisoformat(doc["builds"][1]["started_at"]) == T0 + dt.timedelta(
            days=1
        )

    def test_empty_db_says_so(self, engine, db_url, capsys):
        assert cli.main(["records", "--db", db_url]) == 0
        assert "no builds recorded" in capsys.readouterr().out

    def test_default_url_from_env(self, history, db_url, monkeypatch, capsys):
        monkeypatch.setenv(db.ENV_URL, db_url)
        assert cli.main(["records", "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)["builds"]) == 5

    def test_upgrade_flag_creates_schema(self, db_url, capsys):
        assert cli.main(["records", "--db", db_url, "--upgrade", "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == {"builds": []}

    def test_bad_limit_is_a_usage_error(self, db_url, capsys):
        with pytest.raises(SystemExit) as ei:
            cli.main(["records", "--db", db_url, "--limit", "0"])
        assert ei.value.code == 2

    def test_spool_listing_needs_no_database(self, tmp_path, monkeypatch, capsys):
        from master.records.spool import Spool

        base = tmp_path / "master"
        settings_file = tmp_path / "settings.toml"
        settings_file.write_text(f'[master]\nbasedir = "{base}"\n')
        monkeypatch.setenv("KTSTR_CI_SETTINGS", str(settings_file))
        assert cli.main(["records", "--spool"]) == 0
        assert "no rows spooled in" in capsys.readouterr().out
        Spool(base / "records-spool").put(
            validate_build_row(build_row(buildid=12, branch="dev")),
            why="database is locked",
        )
        assert cli.main(["records", "--spool"]) == 0
        out = capsys.readouterr().out
        assert f"1 row(s) spooled in {base / 'records-spool'}" in out
        assert "build 12  dev  cached  spooled" in out and "database is locked" in out
        assert cli.main(["records", "--spool", str(base / "records-spool"), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert [r["row"]["buildid"] for r in doc["spooled"]] == [12]
        assert doc["rejected"] == 0 and doc["unreadable"] == []

    def test_missing_sqlite_file_is_a_clear_error_not_a_traceback(self, tmp_path):
        missing = tmp_path / "nowhere" / "records.sqlite"
        res = subprocess.run(
            ["ktstr-ci", "records", "--db", f"sqlite:///{missing}", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 1
        assert "Traceback" not in res.stderr
        assert f"ktstr-ci: error: no records database at {missing}" in res.stderr
        assert json.loads(res.stdout)["ok"] is False
        assert not missing.parent.exists()  # a reader creates nothing
