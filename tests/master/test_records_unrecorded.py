"""Rows for builds that ended without their record step (master/records/unrecorded.py).

Against Buildbot's own fake master (its real data API over a real in-memory
Buildbot database, its fake mq) and a real SQLite records database. The real
master and worker processes, with a worker and a master killed mid-build, are
in tests/test_records_faults.py.
"""

from __future__ import annotations

import time

import pytest
from buildbot.config.builder import BuilderConfig
from buildbot.process.properties import Property
from buildbot.process.results import EXCEPTION, RETRY, SUCCESS
from buildbot.test import fakedb
from buildbot.test.fake import fakemaster
from buildbot.test.reactor import TestReactorMixin
from sqlalchemy import exc as sa_exc
from twisted.internet import defer
from twisted.trial import unittest

from ktstr_steps.buildsteps.factory import kernel_build_factory
from master.records import db, queries
from master.records.rows import validate_build_row
from master.records.spool import Spool
from master.records.unrecorded import (
    OUTCOME,
    UnrecordedBuilds,
    interrupted_row,
    records_builders,
)
from tests.support.recordskit import build_row
from tests.support.servicekit import standin_factory

KERNEL, STANDIN = 11, 12
NOW = int(time.time())


def kernel_config() -> BuilderConfig:
    return BuilderConfig(name="linux-tiny", workernames=["w"],
                         factory=kernel_build_factory(repourl="/r.git", profile="tiny"))


def standin_config() -> BuilderConfig:
    return BuilderConfig(name="standin", workernames=["w"],
                         factory=standin_factory(repourl="/r.git", profile="tiny"))


# ------------------------------------------------------------------ pure parts


def test_kernel_builders_are_those_with_a_record_step():
    from ktstr_steps.buildsteps.factory import Checkout, ReleaseSource

    cell = BuilderConfig(name="matrix-cell", workernames=["w"], factory=kernel_build_factory(
        checkout=Checkout.RELEASE_TREE, profile=Property("profile"), releases=ReleaseSource(
            download_cache="/dl", mirror="https://cdn.kernel.org/pub/linux/kernel",
            rc_mirror="https://git.kernel.org/torvalds/t"), cpu_cap=None))

    class Config:
        builders = [kernel_config(), standin_config(), cell]

    assert records_builders(Config()) == {"linux-tiny", "matrix-cell"}
    assert records_builders(object()) == set()


BUILD = {"buildid": 92, "number": 7, "builderid": KERNEL, "results": RETRY, "complete": True,
         "started_at": 1_750_000_000, "complete_at": 1_750_000_100}
PROPS = {"branch": "feature/x", "got_revision": "1a2b3c4d5e", "repository": "/r.git",
         "profile": "tiny", "kernel_profile": "tiny", "workername": "kit-llc0", "host": "kit",
         "llcs": [0], "llc_cpus": "0-1", "make_jobs": 2, "cache_key": "local-1a2b3c4-x",
         "phase_seconds": {"reserve": 0.1, "lookup": 0.2, "configure": 1.5},
         "config_overrides": 1, "buildnumber": 7}


def test_interrupted_row_from_what_buildbot_kept():
    row = interrupted_row(BUILD, "linux-tiny", PROPS,
                          {"name": "make", "state_string": "make (1234 lines)"})
    assert row["kernel_outcome"] == OUTCOME == "interrupted"
    assert row["result"] == "retry"  # Buildbot's own result, as the build ended
    assert (row["buildid"], row["build_number"], row["builder"]) == (92, 7, "linux-tiny")
    assert (row["branch"], row["revision"], row["profile"]) == ("feature/x", "1a2b3c4d5e", "tiny")
    assert (row["worker"], row["host"], row["llc_index"], row["llc_cpus"]) == (
        "kit-llc0", "kit", 0, "0-1")
    assert row["configure_s"] == 1.5 and row.get("make_s") is None
    assert row["error"] == ("ended without its record step in step make (make (1234 lines)): "
                            "the worker or the master was lost; Buildbot retries the build")
    assert row["finished_at"].timestamp() == 1_750_000_100


def test_interrupted_row_keeps_the_row_when_a_property_does_not_fit():
    bad = dict(PROPS, make_jobs="lots", dirty="maybe")
    row = interrupted_row(dict(BUILD, results=EXCEPTION), "linux-tiny", bad)
    assert row["kernel_outcome"] == "interrupted" and row["result"] == "exception"
    assert "make_jobs" not in row and "dirty" not in row
    assert row["error"].endswith("an exception ended the build")


def test_long_branch_is_kept_whole():
    branch = "topic/" + "b" * 400
    assert interrupted_row(BUILD, "linux-tiny", dict(PROPS, branch=branch))["branch"] == branch


# ------------------------------------------------------------------ on a fake master


class _Service:
    """What UnrecordedBuilds needs of the records service: master, spool, query."""

    def __init__(self, master, engine, spool) -> None:
        self.master = master
        self.engine = engine
        self.spool = spool
        self.fail: Exception | None = None

    def query(self, fn, *args, **kwargs):
        if self.fail is not None:
            return defer.fail(self.fail)
        return defer.maybeDeferred(fn, self.engine, *args, **kwargs)


class TestOnAFakeMaster(TestReactorMixin, unittest.TestCase):
    @pytest.fixture(autouse=True)
    def _db(self, tmp_path):
        self.tmp = tmp_path
        self.url = f"sqlite:///{tmp_path / 'records.sqlite'}"

    @defer.inlineCallbacks
    def setUp(self):
        self.setup_test_reactor()
        self.master = yield fakemaster.make_master(self, wantData=True, wantMq=True, wantDb=True)
        self.master.config.builders = [kernel_config(), standin_config()]
        yield self.master.db.insert_test_data([
            fakedb.Master(id=fakedb.FakeDBConnector.MASTER_ID),
            fakedb.Worker(id=1, name="kit-llc0"),
            fakedb.Builder(id=KERNEL, name="linux-tiny"),
            fakedb.Builder(id=STANDIN, name="standin"),
            fakedb.Buildset(id=1),
        ])
        db.upgrade(self.url)
        self.engine = db.make_engine(self.url)
        self.addCleanup(self.engine.dispose)
        self.spool = Spool(self.tmp / "spool")
        self.svc = _Service(self.master, self.engine, self.spool)
        self.watch = UnrecordedBuilds(self.svc, grace=5.0)
        self._ids = iter(range(1, 1000))

    def add_build(self, buildid, builderid=KERNEL, results=RETRY, complete_at=NOW - 60,
                  props=None, steps=("reserve", "make")):
        brid = next(self._ids)
        rows = [
            fakedb.BuildRequest(id=brid, buildsetid=1, builderid=builderid),
            fakedb.Build(id=buildid, number=buildid, buildrequestid=brid, builderid=builderid,
                         workerid=1, masterid=fakedb.FakeDBConnector.MASTER_ID,
                         started_at=complete_at - 30, complete_at=complete_at,
                         results=results),
        ]
        for name, value in (props if props is not None else PROPS).items():
            rows.append(fakedb.BuildProperty(buildid=buildid, name=name, value=value))
        for n, name in enumerate(steps):
            rows.append(fakedb.Step(id=buildid * 100 + n, number=n, name=name, buildid=buildid,
                                    started_at=complete_at - 20 + n, state_string=name))
        return self.master.db.insert_test_data(rows)

    def row(self, buildid):
        return queries.get_build(self.engine, buildid=buildid)

    @defer.inlineCallbacks
    def finished(self, buildid):
        # What Buildbot publishes when a build ends: a copy of the data API's build dict
        # (the fake mq's own message check still expects the older epoch-int form).
        build = yield self.master.data.get(("builds", buildid))
        self.master.mq.verifyMessages = False
        self.master.mq.callConsumer(("builds", str(buildid), "finished"), build)

    @defer.inlineCallbacks
    def test_retry_build_without_record_step_gets_an_interrupted_row_after_the_grace(self):
        yield defer.ensureDeferred(self.watch.start())
        yield self.add_build(92, results=RETRY)
        yield self.finished(92)
        self.reactor.advance(4)
        self.assertIsNone(self.row(92))  # within the grace: the record step may still write
        self.reactor.advance(2)
        row = self.row(92)
        self.assertEqual((row["kernel_outcome"], row["result"]), ("interrupted", "retry"))
        self.assertEqual((row["builder"], row["branch"], row["worker"]),
                         ("linux-tiny", "feature/x", "kit-llc0"))
        self.assertIn("in step make", row["error"])
        yield defer.ensureDeferred(self.watch.stop())

    @defer.inlineCallbacks
    def test_exception_build_gets_its_own_result(self):
        yield defer.ensureDeferred(self.watch.start())
        yield self.add_build(93, results=EXCEPTION)
        yield self.finished(93)
        self.reactor.advance(6)
        self.assertEqual(self.row(93)["result"], "exception")
        yield defer.ensureDeferred(self.watch.stop())

    @defer.inlineCallbacks
    def test_the_record_steps_row_is_never_overwritten_and_never_doubled(self):
        yield defer.ensureDeferred(self.watch.start())
        queries.insert_build(self.engine, build_row(buildid=94, kernel_outcome="cached",
                                                    result="success"))
        yield self.add_build(94, results=SUCCESS, steps=("reserve", "make", "record"))
        yield self.finished(94)
        self.reactor.advance(6)
        self.assertEqual(self.row(94)["kernel_outcome"], "cached")
        # And the step's row written after an interrupted one replaces it (one row).
        yield self.add_build(95, results=RETRY)
        yield self.finished(95)
        self.reactor.advance(6)
        self.assertEqual(self.row(95)["kernel_outcome"], "interrupted")
        queries.insert_build(self.engine, build_row(buildid=95, kernel_outcome="cached"))
        self.assertEqual(self.row(95)["kernel_outcome"], "cached")
        self.assertEqual(len(queries.recent_builds(self.engine, 10)), 2)
        yield defer.ensureDeferred(self.watch.stop())

    @defer.inlineCallbacks
    def test_builds_of_other_builders_and_spooled_rows_are_left_alone(self):
        yield defer.ensureDeferred(self.watch.start())
        yield self.add_build(96, builderid=STANDIN)
        yield self.add_build(97)
        # The record step's row of 97 waits in the spool for the database.
        self.spool.put(validate_build_row(build_row(buildid=97)), why="locked")
        yield self.finished(96)
        yield self.finished(97)
        self.reactor.advance(6)
        self.assertIsNone(self.row(96))
        self.assertIsNone(self.row(97))
        yield defer.ensureDeferred(self.watch.stop())

    @defer.inlineCallbacks
    def test_reconcile_at_start_fills_builds_a_crashed_master_left(self):
        # Finished (as RETRY by Buildbot's housekeeping) before this service was up:
        # no finished message will ever come for them.
        yield self.add_build(101, results=RETRY)
        yield self.add_build(102, results=SUCCESS, steps=("reserve", "record"))
        queries.insert_build(self.engine, build_row(buildid=102))
        yield self.add_build(103, builderid=STANDIN)
        yield self.add_build(104, complete_at=NOW - 8 * 86400)  # older than the window
        self.assertTrue(self.watch.reconcile_pending)
        written = yield defer.ensureDeferred(self.watch.reconcile())
        self.assertEqual(written, 1)
        self.assertFalse(self.watch.reconcile_pending)
        self.assertEqual(self.row(101)["kernel_outcome"], "interrupted")
        self.assertEqual(self.row(102)["kernel_outcome"], "cached")
        self.assertIsNone(self.row(103))
        self.assertIsNone(self.row(104))
        # Idempotent: a second pass writes nothing.
        self.assertEqual((yield defer.ensureDeferred(self.watch.reconcile())), 0)

    @defer.inlineCallbacks
    def test_database_down_leaves_a_reconcile_pending_that_fills_the_gap_later(self):
        yield defer.ensureDeferred(self.watch.start())
        self.watch.reconcile_pending = False
        yield self.add_build(110, results=RETRY)
        self.svc.fail = sa_exc.OperationalError("INSERT", {}, Exception("database is locked"))
        yield self.finished(110)
        self.reactor.advance(6)
        self.assertTrue(self.watch.reconcile_pending)
        self.assertIsNone(self.row(110))
        self.svc.fail = None
        yield defer.ensureDeferred(self.watch.reconcile())
        self.assertEqual(self.row(110)["kernel_outcome"], "interrupted")
        yield defer.ensureDeferred(self.watch.stop())
