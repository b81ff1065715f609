"""The fault suite: kill -9 of a worker, a holder, the master, mid-make, on a real service.

Each test runs the real master (the checkout's master.cfg and kernel factory)
and real pinned buildbot-worker processes (tests/support/servicekit.py) building a
fake kernel tree whose make sleeps (a long make: its ``sleep`` is a direct
child of make, started by the guarded phase command inside the holder's
sandbox). At the worst moment one process is killed with SIGKILL, and the
test watches what follows:

* the build's processes die before the build's locks are let go: at every
  observation, a lock that no longer lists the build's holder means no
  process of that build is alive (never two makes in one tree; never a make
  on an LLC that is not reserved for it);
* nothing stays held: no holder, no cgroup, no flock of the dead build;
* the service goes on: the retried build (or the next push) builds green.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.fakekernel import slow_tree_files, tree_files
from tests.support.faultkit import (
    assert_nothing_held,
    the_locks,
    wait_make_running,
    watch_build_end,
)
from tests.support.servicekit import ServiceKit

pytestmark = pytest.mark.integration

@pytest.fixture
def kit(tmp_path: Path):
    with ServiceKit(tmp_path, llc_groups=[[0], [1]], profiles=("tiny",)) as k:
        yield k


def test_worker_kill9_mid_make_kills_make_before_locks_and_the_retry_builds(kit: ServiceKit):
    tree = kit.make_tree(slow_tree_files(20, "wk"), path=kit.root / "src" / "wk")
    kit.push(tree, "wk")
    first = kit.wait_build("wk", timeout=30)["buildid"]
    props, st, procs = wait_make_running(kit, first)
    locks = the_locks(kit, props, st)
    worker_pid = kit.worker_pids()[props["workername"]]

    os.kill(worker_pid, signal.SIGKILL)  # the buildbot-worker dies mid-make
    took = watch_build_end(procs, st["pid"], locks, limit=15)
    assert took < 5, f"the build's make outlived its worker by {took:.1f}s"
    assert_nothing_held(kit, st)
    log = (kit.root / "run" / "holders" / f"{st['name']}.log").read_text()
    assert f"owner pid {worker_pid} exited" in log and "killed the build's processes" in log

    assert kit.wait_finished(first, timeout=60)["results"] == kit.RETRY
    retry = kit.wait_build("wk", after_buildid=first, timeout=60)["buildid"]
    assert kit.wait_finished(retry, timeout=180)["results"] == kit.SUCCESS
    assert kit.build_properties(retry)["kernel_outcome"] == "cached"


def test_holder_kill9_mid_make_fails_the_build_stores_and_publishes_nothing(kit: ServiceKit):
    tree = kit.make_tree(slow_tree_files(20, "hk"), path=kit.root / "src" / "hk")
    kit.push(tree, "hk")
    bid = kit.wait_build("hk", timeout=30)["buildid"]
    props, st, procs = wait_make_running(kit, bid)
    locks = the_locks(kit, props, st)

    os.kill(st["pid"], signal.SIGKILL)  # the holder dies; the make's guard must notice
    took = watch_build_end(procs, st["pid"], locks, limit=15)
    assert took < 3

    done = kit.wait_finished(bid, timeout=60)
    assert done["results"] in (kit.FAILURE, kit.EXCEPTION)
    lost = f"reservation lost: holder pid {st['pid']} died"
    steps = {s["name"]: s for s in kit.build_steps(bid)}
    assert steps["make"]["state_string"].startswith(lost)
    assert lost in done["state_string"]
    for later in ("validate", "compile-commands", "cache-store", "publish"):
        assert steps.get(later, {}).get("results") in (kit.SKIPPED, None), later  # never ran
    assert kit.build_properties(bid).get("kernel_outcome") != "cached"
    assert not [p for p in kit.cache_dir.iterdir() if not p.name.startswith(".")], \
        "a build without its reservation stored a kernel"
    assert steps["release"]["results"] == kit.SUCCESS
    assert_nothing_held(kit, st)

    # The tree is usable at once by the next build of the branch.
    kit.commit(tree, {"README": "next\n", "Kconfig": tree_files()["Kconfig"]}, "fast again")
    kit.push(tree, "hk")
    nxt = kit.wait_build("hk", after_buildid=bid, timeout=30)["buildid"]
    assert kit.wait_finished(nxt, timeout=120)["results"] == kit.SUCCESS


def test_master_kill9_mid_make_releases_at_once_and_the_queue_proceeds_after_restart(
    tmp_path: Path,
):
    with ServiceKit(tmp_path, llc_groups=[[0]], profiles=("tiny",)) as kit:
        tree = kit.make_tree(slow_tree_files(15, "mk"), path=kit.root / "src" / "mk")
        kit.push(tree, "mk")
        first = kit.wait_build("mk", timeout=30)["buildid"]
        queued = kit.make_tree(tree_files(), path=kit.root / "src" / "q")
        kit.push(queued, "queued")  # one worker: this request waits behind mk
        props, st, procs = wait_make_running(kit, first)
        locks = the_locks(kit, props, st)
        master_pid = kit.service.master_state().pid

        os.kill(master_pid, signal.SIGKILL)
        took = watch_build_end(procs, st["pid"], locks, limit=60)
        assert took < 10, f"the reservation of a lost build was held {took:.1f}s"
        assert_nothing_held(kit, st)
        log = (kit.root / "run" / "holders" / f"{st['name']}.log").read_text()
        assert "connection to the master" in log and "closed" in log

        # A push while the master is down is queued by the hook, not lost.
        down = kit.make_tree({**tree_files(), "README": "down\n"}, path=kit.root / "src" / "d")
        pushed = kit.push(down, "while-down")
        assert "queued" in pushed.output, pushed.output

        t0 = time.monotonic()
        kit.start()  # what `make run` does: the master again; the worker still runs
        left = lambda: max(1.0, 90 - (time.monotonic() - t0))  # noqa: E731
        retried = kit.wait_build("mk", after_buildid=first, finished=True, timeout=90)
        other = kit.wait_build("queued", finished=True, timeout=left())
        late = kit.wait_build("while-down", finished=True, timeout=left())
        assert time.monotonic() - t0 < 90
        assert retried["results"] == other["results"] == late["results"] == kit.SUCCESS
        assert len(kit.builds(branch="while-down")) == 1
