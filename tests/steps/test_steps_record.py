"""Record (one records row per build, whatever happened) and Release (always give back)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from buildbot.process.results import CANCELLED, FAILURE, SUCCESS, WARNINGS
from twisted.trial import unittest

from ktstr_steps.buildsteps import Record, Release
from tests.support.steps_harness import (
    HOLDER,
    STATE,
    TREE,
    FakeRecords,
    KtstrStepMixin,
    ktstr,
)

KEY = "local-1a2b3c4-x86_64-kc0123abcd"

RESULT = {
    "ok": True, "outcome": "cached", "cache_key": KEY, "entry_dir": f"/cache/{KEY}",
    "image_path": f"/cache/{KEY}/bzImage", "config_hash": "deadbeef",
    "kconfig_hash": "0123abcd", "extra_kconfig_hash": None, "dirty": False, "is_git": True,
    "git_hash": "1a2b3c4", "source": {"type": "local"}, "source_dir": TREE,
    "version": "6.12.3", "base_config": "tinyconfig", "profile": "tiny", "make_jobs": 2,
    "llcs": [0], "llc_cpus": [0, 1], "make_warnings": 4, "make_errors": 0,
    "overrides": [{"symbol": "CONFIG_X", "was": "=y", "now": "is not set"}], "dropped": [],
    "warnings": [], "errors": [],
    "phases": {"lookup": 0.1, "configure": 1.2, "make": 30.5, "store": 0.4},
}

WORKER_PROPS = {"workername": "host1-llc0", "host": "host1", "llc_index": 0,
                "llc_cpus": "0-1", "got_revision": "1a2b3c4d5e", "repository": "/var/linux.git"}
# What CacheLookup leaves behind: the build has its own state file to summarise.
REACHED_LOOKUP = {"phase_seconds": {"lookup": 0.1}}


class FailedStep:
    """An executed step of the build that failed, as Build.executedSteps holds it."""

    def __init__(self, name: str, summary: str) -> None:
        self.name = name
        self.results = FAILURE
        self.summary = summary

    def getResultSummary(self) -> dict[str, str]:
        return {"step": f"{self.summary} (failure)"}


def summary():
    return ktstr("phase", "summary", "--state", STATE, "--json")


class TestRecord(KtstrStepMixin, unittest.TestCase):
    def test_row_from_summary_and_properties(self) -> None:
        records = FakeRecords()
        self.setup_ktstr_step(Record(records=records), **WORKER_PROPS, **REACHED_LOOKUP)
        self.build.setProperty("phase_seconds", {"reserve": 0.2, "source_lock": 0.0,
                                                 "lookup": 0.3, "make": 99.0}, "Reserve")
        self.expect_commands(summary().answer(RESULT).exit(0))
        self.expect_outcome(result=SUCCESS, state_string="recorded row 1 (cached)")
        self.expect_property("record_id", 1, "Record")
        self.expect_property("kernel_outcome", "cached")
        self.expect_property("image_path", f"/cache/{KEY}/bzImage")
        d = self.run_step()

        @d.addCallback
        def check(_: object) -> None:
            [row] = records.rows
            self.assertEqual(row["buildid"], 92)
            self.assertEqual(row["builder"], "kernel")
            self.assertEqual(row["build_number"], 7)
            self.assertEqual(row["branch"], "main")
            self.assertEqual(row["revision"], "1a2b3c4d5e")
            self.assertEqual(row["worker"], "host1-llc0")
            self.assertEqual(row["host"], "host1")
            self.assertEqual(row["llc_index"], 0)
            self.assertEqual(row["llc_cpus"], "0-1")
            self.assertEqual(row["make_jobs"], 2)
            self.assertEqual(row["cache_key"], KEY)
            self.assertEqual(row["kconfig_hash"], "0123abcd")
            self.assertIs(row["dirty"], False)
            self.assertEqual(row["kernel_outcome"], "cached")
            self.assertEqual(row["kernel_version"], "6.12.3")
            self.assertEqual(row["profile"], "tiny")
            self.assertEqual(row["result"], "success")
            self.assertEqual(row["overrides_count"], 1)
            self.assertEqual(row["dropped_count"], 0)
            self.assertEqual(row["make_warnings"], 4)
            self.assertIsNone(row["error"])
            # The pipeline's own timings win; the steps' fill the phases it did not see.
            self.assertEqual(row["make_s"], 30.5)
            self.assertEqual(row["lookup_s"], 0.1)
            self.assertEqual(row["reserve_s"], 0.2)
            self.assertIsNone(row["validate_s"])
            self.assertIsInstance(row["finished_at"], dt.datetime)

        return d

    def test_row_is_valid_for_the_records_database(self) -> None:
        # Cross-check with the records side's own validator: every key is a column.
        from master.records.rows import validate_build_row

        records = FakeRecords()
        self.setup_ktstr_step(Record(records=records), **WORKER_PROPS, **REACHED_LOOKUP)
        self.expect_commands(summary().answer(RESULT).exit(0))
        self.expect_outcome(result=SUCCESS)
        d = self.run_step()
        d.addCallback(lambda _: validate_build_row(records.rows[0]))
        return d

    def test_failed_before_kernel_phases_still_records(self) -> None:
        # Reserve failed: no lookup ran, so no summary is asked for (a state file in the
        # workdir would be a previous build's); the row comes from what the build knows.
        records = FakeRecords()
        self.setup_ktstr_step(Record(records=records), **WORKER_PROPS)
        self.build.executedSteps = [FailedStep("reserve", "reserve failed: no free LLC")]
        self.build.results = FAILURE
        self.expect_outcome(result=SUCCESS, state_string="recorded row 1 (failed)")
        self.expect_property("kernel_outcome", "failed")
        d = self.run_step()

        @d.addCallback
        def check(_: object) -> None:
            row = records.rows[0]
            self.assertEqual(row["kernel_outcome"], "failed")
            self.assertEqual(row["result"], "failure")
            self.assertEqual(
                row["error"], "reserve: reserve failed: no free LLC (failure)"
            )
            # Known from the worker even without a summary.
            self.assertEqual(row["llc_cpus"], "0-1")
            self.assertIsNone(row["cache_key"])

        return d

    def test_stopped_build_records_cancelled(self) -> None:
        records = FakeRecords()
        self.setup_ktstr_step(Record(records=records), **WORKER_PROPS, **REACHED_LOOKUP)
        self.build.setProperty("cache_key", KEY, "CacheLookup")
        self.build.stopped = True
        self.build.results = CANCELLED
        failed = dict(RESULT, ok=False, outcome="failed", image_path=None, entry_dir=None)
        self.expect_commands(summary().answer(failed).exit(1))
        self.expect_outcome(result=SUCCESS, state_string="recorded row 1 (cancelled)")
        self.expect_property("kernel_outcome", "cancelled")
        d = self.run_step()

        @d.addCallback
        def check(_: object) -> None:
            self.assertEqual(records.rows[0]["kernel_outcome"], "cancelled")
            self.assertEqual(records.rows[0]["result"], "cancelled")
            self.assertEqual(records.rows[0]["cache_key"], KEY)

        return d

    def test_cache_hit_recorded(self) -> None:
        records = FakeRecords()
        self.setup_ktstr_step(Record(records=records), **WORKER_PROPS, **REACHED_LOOKUP)
        self.build.setProperty("kernel_outcome", "cache-hit", "CacheLookup")
        hit = dict(RESULT, outcome="cache-hit", phases={"lookup": 0.1})
        self.expect_commands(summary().answer(hit).exit(0))
        self.expect_outcome(result=SUCCESS, state_string="recorded row 1 (cache-hit)")
        # The cache hit's image comes from the summary: lookup's JSON has none.
        self.expect_property("image_path", f"/cache/{KEY}/bzImage")
        return self.run_step()

    def test_missing_records_service_is_a_warning(self) -> None:
        # The fake master has no records service registered.
        self.setup_ktstr_step(Record(), **WORKER_PROPS, **REACHED_LOOKUP)
        self.expect_commands(summary().answer(RESULT).exit(0))
        self.expect_outcome(
            result=WARNINGS,
            state_string="not recorded: no records service configured (warnings)",
        )
        self.expect_no_property("record_id")
        self.expect_log_file("row", re.compile(r'(?s).*"cache_key": "local-1a2b3c4'))
        return self.run_step()

    def test_service_found_on_master(self) -> None:
        # Without the seam the step finds the master's configured records service.
        from master.records.service import SERVICE_NAME, RecordsService

        svc = RecordsService(db_url="sqlite://")
        fake = FakeRecords()
        self.patch(svc, "record", fake.record)
        # The fake master has no service manager; a real one keeps c['services'] here.
        self.master.service_manager = type("Services", (), {})()
        self.master.service_manager.namedServices = {SERVICE_NAME: svc}
        self.setup_ktstr_step(Record(), **WORKER_PROPS, **REACHED_LOOKUP)
        self.expect_commands(summary().answer(RESULT).exit(0))
        self.expect_outcome(result=SUCCESS, state_string="recorded row 1 (cached)")
        d = self.run_step()
        d.addCallback(lambda _: self.assertEqual(fake.rows[0]["cache_key"], KEY))
        return d

    def test_service_error_is_a_warning(self) -> None:
        self.setup_ktstr_step(Record(records=FakeRecords(fail=RuntimeError("db locked"))),
                              **REACHED_LOOKUP)
        self.expect_commands(summary().answer(RESULT).exit(0))
        self.expect_outcome(result=WARNINGS, state_string="not recorded: db locked (warnings)")
        d = self.run_step()
        d.addCallback(lambda _: self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1))
        return d

    def test_spooled_row_says_recorded_late_and_warns(self) -> None:
        # The records service could not write within its retry budget and spooled the
        # row: the step says so, the build is not failed (the kernel is fine).
        from master.records.service import RowSpooled

        spooled = RowSpooled("database is locked", 1, Path("/m/records-spool"))
        self.setup_ktstr_step(Record(records=FakeRecords(fail=spooled)), **WORKER_PROPS,
                              **REACHED_LOOKUP)
        self.expect_commands(summary().answer(RESULT).exit(0))
        self.expect_outcome(
            result=WARNINGS,
            state_string="recorded late: database is locked; row spooled, written when the "
            "database is back (warnings)",
        )
        self.expect_no_property("record_id")
        self.expect_property("kernel_outcome", "cached")
        self.expect_log_file("recorded late",
                             re.compile(r"(?s).*1 row\(s\) waiting in /m/records-spool"))
        d = self.run_step()
        # Expected, not an error: nothing for the master's error log.
        d.addCallback(lambda _: self.assertEqual(self.flushLoggedErrors(RowSpooled), []))
        return d

    def test_spooled_by_any_service_is_recognised_by_its_flag(self) -> None:
        # The step does not import the master: any exception flagged "spooled" counts.
        class Spooled(Exception):
            spooled = True
            why = "connection refused"

        self.setup_ktstr_step(Record(records=FakeRecords(fail=Spooled("x"))), **WORKER_PROPS)
        self.build.results = FAILURE
        self.expect_outcome(
            result=WARNINGS,
            state_string="recorded late: connection refused; row spooled, written when the "
            "database is back (warnings)",
        )
        return self.run_step()


class TestRelease(KtstrStepMixin, unittest.TestCase):
    def release(self):
        return ktstr("holder", "release", "--name", HOLDER, "--json")

    def test_released_in_order(self) -> None:
        step = self.setup_ktstr_step(Release())
        self.expect_commands(self.release().answer(
            {"name": HOLDER, "released": ["source-lock", "sandbox", "llc-locks"]}).exit(0))
        self.expect_outcome(
            result=SUCCESS, state_string="released source-lock, sandbox, llc-locks"
        )
        self.assertTrue(step.alwaysRun)
        return self.run_step()

    def test_nothing_held(self) -> None:
        self.setup_ktstr_step(Release())
        self.expect_commands(self.release().answer({"name": HOLDER, "released": []})
                             .exit(0))
        self.expect_outcome(result=SUCCESS, state_string="nothing held")
        return self.run_step()

    def test_release_failure_flunks(self) -> None:
        self.setup_ktstr_step(Release())
        self.expect_commands(self.release().answer({"ok": False, "errors": [
            {"kind": "sandbox", "message": "cgroup rmdir: Device or resource busy"}]}).exit(1))
        self.expect_outcome(
            result=FAILURE,
            state_string="release failed: cgroup rmdir: Device or resource busy (failure)",
        )
        return self.run_step()
