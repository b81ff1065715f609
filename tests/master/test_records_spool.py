"""No record is lost: retries with backoff, the spool, and writing it when the database is back.

The faults are real: another process holding SQLite's write lock, a database the
service can only open read-only, a service restarted with rows still spooled.
The service runs on the real reactor (trial spins it) with a short retry budget.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

import pytest
from sqlalchemy import exc as sa_exc
from twisted.internet import defer, task
from twisted.trial import unittest

from master.records import db, queries, retry
from master.records.rows import validate_build_row
from master.records.service import RecordsService, RowSpooled
from master.records.spool import Spool
from tests.support.recordskit import SqliteLock, build_row

# Short enough for a quick test, long enough for several attempts.
BUDGET = 1.5
BUSY = 0.3


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1) -> defer.Deferred:
    """Poll an (async) predicate on the reactor until it is truthy."""
    from twisted.internet import reactor

    async def loop():
        deadline = time.monotonic() + timeout
        while True:
            value = await defer.maybeDeferred(predicate)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await task.deferLater(reactor, interval)

    return defer.ensureDeferred(loop())


# ------------------------------------------------------------------ pure parts


class TestTransient:
    def test_database_errors_are_transient_bad_rows_are_not(self):
        locked = sa_exc.OperationalError("INSERT", {}, Exception("database is locked"))
        assert retry.is_transient(locked)
        assert retry.describe(locked) == "database is locked"
        assert retry.is_transient(sa_exc.InternalError("x", {}, Exception("read-only")))
        assert retry.is_transient(retry.RecordsUnavailable("not open yet"))
        wrapped = db.RecordsError("cannot migrate records database x: refused")
        wrapped.__cause__ = locked
        assert retry.is_transient(wrapped)
        assert not retry.is_transient(db.InvalidRecord("kernel_outcome: unknown outcome"))
        assert not retry.is_transient(TypeError("a bug is not retried"))

    def test_backoff_doubles_up_to_the_longest(self):
        delays = retry.Backoff(budget=20, first=0.5, longest=5).delays()
        assert [next(delays) for _ in range(6)] == [0.5, 1, 2, 4, 5, 5]


class TestSpool:
    def test_put_is_durable_ordered_and_readable(self, tmp_path):
        spool = Spool(tmp_path / "spool")
        assert len(spool) == 0 and spool.entries() == []
        a = spool.put(validate_build_row(build_row(buildid=1)), why="database is locked")
        b = spool.put(validate_build_row(build_row(buildid=2)), why="x")
        assert a.name < b.name and len(spool) == 2
        first = spool.entries()[0]
        assert first.buildid == 1 and first.why == "database is locked"
        # Times travel as ISO text and validate again as the same row.
        assert validate_build_row(first.row)["started_at"] == build_row()["started_at"]
        assert spool.buildids() == {1, 2}
        assert not list((tmp_path / "spool").glob(".tmp-*"))

    def test_partial_write_of_a_crash_is_ignored_and_cleaned(self, tmp_path):
        spool = Spool(tmp_path)
        (tmp_path / ".tmp-00000000000000000001-1-000000.json").write_text('{"row": {"bui')
        assert len(spool) == 0
        assert spool.clean_partial() == 1 and not list(tmp_path.iterdir())

    def test_unreadable_file_is_reported_not_dropped(self, tmp_path):
        spool = Spool(tmp_path)
        bad = tmp_path / "00000000000000000001-1-000000.json"
        bad.write_text("{truncated")
        [(path, why)] = spool.entries()
        assert path == bad and "unreadable spool file" in why
        moved = spool.reject(path, why)
        assert moved.parent.name == "rejected" and moved.with_suffix(".why").read_text()
        assert len(spool) == 0 and spool.rejected() == 1


# ------------------------------------------------------------------ the service


class _ServiceCase(unittest.TestCase):
    @pytest.fixture(autouse=True)
    def _paths(self, tmp_path):
        self.tmp = tmp_path
        self.path = tmp_path / "records.sqlite"
        self.url = f"sqlite:///{self.path}"
        self.spool_dir = tmp_path / "spool"

    @defer.inlineCallbacks
    def start(self, url: str | None = None, budget: float = BUDGET):
        svc = RecordsService(db_url=url or self.url, spool_dir=str(self.spool_dir),
                             retry_budget=budget)
        svc.busy_timeout = BUSY
        svc.flush_interval = 0.2
        svc.backoff = retry.Backoff(budget=budget, first=0.1, longest=0.4)
        yield svc.startService()
        self.addCleanup(lambda: svc.stopService() if svc.running else None)
        return svc

    def rows(self) -> list[dict]:
        # A separate reader, as the dashboard is: WAL lets it read during the lock.
        eng = db.make_engine(self.url, must_exist=True)
        try:
            return queries.recent_builds(eng, limit=50)
        finally:
            eng.dispose()


class TestLockedDatabase(_ServiceCase):
    @defer.inlineCallbacks
    def test_locked_longer_than_the_budget_spools_then_writes_once_unlocked(self):
        svc = yield self.start()
        yield svc.record(build_row(buildid=1))  # the database works before the fault
        lock = SqliteLock(self.path).acquire()
        self.addCleanup(lock.release)
        began = time.monotonic()
        err = yield self.assertFailure(svc.record(build_row(buildid=2, branch="dev")), RowSpooled)
        took = time.monotonic() - began
        self.assertIn("database is locked", err.why)
        self.assertIn("recorded late: database is locked; row spooled", str(err))
        # It did retry for the budget (several attempts), and not much longer.
        self.assertGreaterEqual(took, BUDGET - 0.2)
        self.assertLess(took, BUDGET + 2 * BUSY + 1.0)
        self.assertEqual(svc.status()["spooled"], 1)
        self.assertEqual([r["buildid"] for r in self.rows()], [1])

        # The database is known to be down now: the next row waits one attempt, not the budget.
        began = time.monotonic()
        yield self.assertFailure(svc.record(build_row(buildid=3)), RowSpooled)
        self.assertLess(time.monotonic() - began, BUDGET - 0.3)
        self.assertEqual(len(svc.spool), 2)

        lock.release()
        yield wait_until(lambda: len(self.rows()) == 3, 10, "the spooled rows to be written")
        rows = {r["buildid"]: r for r in self.rows()}
        self.assertEqual(sorted(rows), [1, 2, 3])
        self.assertEqual(rows[2]["branch"], "dev")
        self.assertEqual(len(svc.spool), 0)
        # Written exactly once: more flushes change nothing.
        yield defer.ensureDeferred(svc.flush())
        self.assertEqual(len(self.rows()), 3)

    @defer.inlineCallbacks
    def test_lock_released_within_the_budget_is_just_a_slow_write(self):
        svc = yield self.start(budget=5.0)
        lock = SqliteLock(self.path, hold_for=0.8).acquire()
        self.addCleanup(lock.release)
        rowid = yield svc.record(build_row(buildid=7))
        self.assertIsInstance(rowid, int)
        self.assertEqual(len(svc.spool), 0)
        self.assertEqual([r["buildid"] for r in self.rows()], [7])

    @defer.inlineCallbacks
    def test_service_stopped_while_retrying_keeps_the_row_in_the_spool(self):
        # The master shuts down while a record step waits for a locked database.
        svc = yield self.start(budget=10.0)
        lock = SqliteLock(self.path).acquire()
        self.addCleanup(lock.release)
        pending = svc.record(build_row(buildid=8))
        from twisted.internet import reactor

        yield task.deferLater(reactor, 0.5, lambda: None)
        yield svc.stopService()
        err = yield self.assertFailure(pending, RowSpooled)
        self.assertEqual(err.why, "the records service stopped")
        self.assertEqual(Spool(self.spool_dir).buildids(), {8})

    @defer.inlineCallbacks
    def test_invalid_row_is_refused_at_once_never_spooled(self):
        svc = yield self.start()
        lock = SqliteLock(self.path).acquire()
        self.addCleanup(lock.release)
        began = time.monotonic()
        err = yield self.assertFailure(svc.record(build_row(make_jobs="two")), db.InvalidRecord)
        self.assertLess(time.monotonic() - began, 0.5)
        self.assertIn("make_jobs: expected an integer", str(err))
        self.assertEqual(len(svc.spool), 0)


class TestReadOnlyAndRestart(_ServiceCase):
    @defer.inlineCallbacks
    def test_read_only_database_spools_and_the_next_start_writes_the_spool(self):
        db.upgrade(self.url)
        # The file as a read-only database (root ignores file modes, SQLite's mode=ro does not).
        ro = f"sqlite:///file:{self.path}?mode=ro&uri=true"
        svc = yield self.start(url=ro)
        err = yield self.assertFailure(svc.record(build_row(buildid=11)), RowSpooled)
        self.assertIn("readonly database", err.why)
        yield svc.stopService()
        self.assertEqual(self.rows(), [])
        # The spool is files in the master's basedir: it outlives the service.
        [left] = Spool(self.spool_dir).entries()
        self.assertEqual(left.buildid, 11)
        self.assertEqual(json.loads(left.path.read_text())["why"], err.why)

        again = yield self.start()  # a new instance, as after a master restart
        yield wait_until(lambda: self.rows(), 10, "the spooled row to be written at start")
        self.assertEqual([r["buildid"] for r in self.rows()], [11])
        yield wait_until(lambda: len(again.spool) == 0, 5, "the spool to empty")

    @defer.inlineCallbacks
    def test_row_written_but_not_yet_unspooled_is_not_duplicated(self):
        # A crash between the database commit and removing the spool file writes the row
        # again on the next start: keyed by build id, that is the same row.
        spool = Spool(self.spool_dir)
        path = spool.put(validate_build_row(build_row(buildid=21, result="retry")))
        saved = path.read_bytes()
        svc = yield self.start()
        yield wait_until(lambda: len(svc.spool) == 0, 10, "the first flush")
        path.write_bytes(saved)
        yield defer.ensureDeferred(svc.flush())
        self.assertEqual([r["buildid"] for r in self.rows()], [21])
        self.assertEqual(len(svc.spool), 0)

    @defer.inlineCallbacks
    def test_bad_spool_file_does_not_hold_up_the_rows_behind_it(self):
        spool = Spool(self.spool_dir)
        self.spool_dir.mkdir()
        (self.spool_dir / "00000000000000000001-1-000000.json").write_text("{truncated")
        spool.put(validate_build_row(build_row(buildid=31)))
        svc = yield self.start()
        yield wait_until(lambda: self.rows(), 10, "the good row")
        self.assertEqual([r["buildid"] for r in self.rows()], [31])
        self.assertEqual(svc.status()["rejected"], 1)

    @defer.inlineCallbacks
    def test_database_missing_at_start_opens_later(self):
        # The SQLite file is not there yet and may not be created here (mode=rw, as for
        # a file another host provides): the master starts, rows are spooled, and
        # they land once the file appears.
        url = f"sqlite:///file:{self.tmp / 'later' / 'records.sqlite'}?mode=rw&uri=true"
        svc = yield self.start(url=url, budget=0.3)
        self.assertFalse(svc.status()["open"])
        yield self.assertFailure(svc.record(build_row(buildid=41)), RowSpooled)
        (self.tmp / "later").mkdir(exist_ok=True)
        sqlite3_file = self.tmp / "later" / "records.sqlite"
        sqlite3.connect(sqlite3_file).close()  # the file appears (empty: the service migrates it)
        self.url = f"sqlite:///{sqlite3_file}"
        yield wait_until(lambda: svc.status()["open"] and not len(svc.spool), 10,
                         "the service to open the database and write the spool")
        self.assertEqual([r["buildid"] for r in self.rows()], [41])


def test_spool_dir_defaults_to_the_master_basedir(tmp_path):
    class _Master:
        basedir = str(tmp_path)

    svc = RecordsService(db_url="sqlite://")
    svc.parent = type("P", (), {"master": _Master()})()
    assert svc._make_spool(None).directory == tmp_path / "records-spool"
    assert os.fspath(svc._make_spool(str(tmp_path / "x")).directory) == str(tmp_path / "x")
    svc.parent = None
    assert svc._make_spool(None) is None

