"""No record is lost, with real processes: a real master, real pinned workers, a real
SQLite records file, ``kill -9`` and another process's write lock.

The builds are tests/support/recordskit.py's stand-in (``info``, ``hold`` for as long as
the test says, then the real ``Record`` step), so a build can be faulted
mid-way without building a kernel. Each test has its own service (a fault
leaves it in a state the next test must not see).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from master.records import db as records_db
from master.records import queries
from tests.support.recordskit import SqliteLock
from tests.support.servicekit import RETRY, ServiceKit

pytestmark = pytest.mark.integration
FACTORY = "tests.support.recordskit:recorded_standin_factory"


def record_rows(kit: ServiceKit, buildid: int | None = None) -> list[dict]:
    engine = records_db.make_engine(kit.settings.databases.records, must_exist=True)
    try:
        rows = queries.recent_builds(engine, limit=500)
    finally:
        engine.dispose()
    return [r for r in rows if buildid is None or r["buildid"] == buildid]


def step(kit: ServiceKit, buildid: int, name: str) -> dict | None:
    return next((s for s in kit.build_steps(buildid) if s["name"] == name), None)


def wait_step_started(kit: ServiceKit, buildid: int, name: str, timeout: float = 60) -> dict:
    return kit.wait_for(
        lambda: (s := step(kit, buildid, name)) and s["started_at"] and s, timeout,
        f"step {name} of build {buildid} to start")


def spool_dir(kit: ServiceKit) -> Path:
    return kit.settings.master.basedir / "records-spool"


def test_worker_killed_mid_build_the_retry_build_has_its_row(tmp_path: Path) -> None:
    with ServiceKit(tmp_path, factory=FACTORY) as kit:
        kit.set_hold(120)
        tree = kit.make_tree({"README": "x\n"})
        branch = "feature/worker-lost"
        kit.push(tree, branch)
        build = kit.wait_build(branch, timeout=30)
        wait_step_started(kit, build["buildid"], "hold")
        [(name, pid)] = kit.worker_pids().items()
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        done = kit.wait_finished(build["buildid"], timeout=60)
        assert done["results"] == RETRY
        # The record step never ran (the worker is gone); the records service writes the row.
        [row] = kit.wait_for(lambda: record_rows(kit, build["buildid"]), 30,
                             "the RETRY build's records row")
        print(f"\nrow of the RETRY build {time.monotonic() - killed:.1f}s after kill -9 "
              "of the worker")
        assert row["kernel_outcome"] == "interrupted" and row["result"] == "retry"
        assert row["branch"] == branch and row["worker"] == name
        assert "in step hold" in row["error"]
        assert len(record_rows(kit)) == 1


def test_records_db_locked_longer_than_the_retry_budget_row_is_written_late(
    tmp_path: Path,
) -> None:
    with ServiceKit(tmp_path, factory=FACTORY) as kit:
        kit.set_hold(0)
        records = Path(records_db.sqlite_path(kit.settings.databases.records))
        tree = kit.make_tree({"README": "x\n"})
        with SqliteLock(records) as lock:
            kit.push(tree, "locked")
            build = kit.wait_build("locked", timeout=30)
            bid = build["buildid"]
            done = kit.wait_finished(bid, timeout=90)
            held = time.monotonic()
            record = step(kit, bid, "record")
            assert record["state_string"] == ("recorded late: database is locked; row spooled, "
                                              "written when the database is back (warnings)")
            assert done["results"] in (kit.SUCCESS, kit.WARNINGS)  # the kernel build is fine
            assert len(list(spool_dir(kit).glob("*.json"))) == 1
            assert record_rows(kit, bid) == []  # readers still read: it is not there yet
            lock.release()
        released = time.monotonic()
        [row] = kit.wait_for(lambda: record_rows(kit, bid), 30, "the spooled row")
        appeared = time.monotonic() - released
        print(f"\nrow appeared {appeared:.1f}s after the lock was released "
              f"({released - held:.1f}s after the build ended)")
        assert row["branch"] == "locked" and row["kernel_outcome"] != "interrupted"
        assert appeared < 15  # the flush runs every 5 s
        kit.wait_for(lambda: not list(spool_dir(kit).glob("*.json")), 10, "the spool to empty")
        assert len(record_rows(kit)) == 1


def test_master_killed_mid_build_and_restarted_the_build_has_its_row(tmp_path: Path) -> None:
    with ServiceKit(tmp_path, factory=FACTORY) as kit:
        kit.set_hold(120)
        tree = kit.make_tree({"README": "x\n"})
        kit.push(tree, "crash")
        build = kit.wait_build("crash", timeout=30)
        bid = build["buildid"]
        wait_step_started(kit, bid, "hold")
        master_pid = kit.service.master_state().pid
        assert master_pid is not None
        os.kill(master_pid, signal.SIGKILL)
        # Gone, not only dead: twistd refuses to start while the old pid is a zombie.
        kit.wait_for(lambda: not psutil.pid_exists(master_pid), 30, "the master to be reaped")
        kit.set_hold(0)  # the retried build, once the worker is back, ends at once
        began = time.monotonic()
        kit.service._start_master(90)
        # Buildbot's housekeeping ends the dead master's build RETRY before our service
        # runs; the service's reconcile at start finds it without a row.
        done = kit.wait_finished(bid, timeout=60)
        assert done["results"] == RETRY
        [row] = kit.wait_for(lambda: record_rows(kit, bid), 60, "the crashed build's row")
        print(f"\nrow of the crashed build {time.monotonic() - began:.1f}s after the restart began")
        assert (row["kernel_outcome"], row["result"], row["branch"]) == (
            "interrupted", "retry", "crash")
        # The retried build runs its record step: its own row, not a second one for bid.
        retried = kit.wait_build("crash", finished=True, after_buildid=bid, timeout=90)
        kit.wait_for(lambda: record_rows(kit, retried["buildid"]), 30, "the retried build's row")
        assert len(record_rows(kit, bid)) == 1
