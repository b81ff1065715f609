"""The fault suite: kill -9 of a worker, a holder, the master, mid-make, on a real service.

Each test runs the real master (the checkout's master.cfg and kernel factory)
and real pinned buildbot-worker processes (tests/servicekit.py) building a
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

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from ktstr_steps import flock
from ktstr_steps.buildprocs import MARKER_ENV
from ktstr_steps.srclock import source_lock_path
from tests.fakekernel import slow_tree_files, tree_files
from tests.servicekit import ServiceKit

pytestmark = pytest.mark.integration

LLC_LOCKS = Path("/tmp")  # where the kit's workers take ktstr's LLC locks (ktstr's default)


def build_processes(holder: str) -> list[psutil.Process]:
    """Every live process carrying holder ``holder``'s marker (the phase command, make, sleep)."""
    out = []
    for p in psutil.process_iter():
        try:
            tag = p.environ().get(MARKER_ENV, "")
            if tag.split(":", 1)[0] == holder and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def wait_make_running(kit: ServiceKit, buildid: int, timeout: float = 120) -> tuple[dict, dict, list]:
    """Wait for the long sleep of this build's make; (props, holder state, its processes)."""

    def running():
        props = kit.build_properties(buildid)
        name = props.get("holder_name")
        if not name:
            return None
        procs = build_processes(name)
        if not any(p.name() == "sleep" for p in procs):
            return None
        st = json.loads((kit.root / "run" / "holders" / f"{name}.json").read_text())
        return props, st, procs

    return kit.wait_for(running, timeout, f"build {buildid}'s make to run its sleep", interval=0.1)


def lock_holders(path: Path) -> set[int]:
    return {h.pid for h in flock.holders(path)} if path.exists() else set()


def watch_build_end(procs: list[psutil.Process], holder_pid: int, locks: list[Path],
                    limit: float) -> float:
    """Poll until every process of the build is dead and none of ``locks`` lists its holder.

    Whenever a lock no longer lists the holder, every process of the build must
    already be dead. Returns the seconds it took.
    """
    start = time.monotonic()
    while time.monotonic() - start < limit:
        released = [p for p in locks if holder_pid not in lock_holders(p)]
        alive = [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not (released and alive), f"{released} released while {alive} still run"
        if not alive and len(released) == len(locks):
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"the build did not end within {limit}s")


def assert_nothing_held(kit: ServiceKit, holder_state: dict) -> None:
    def holder_gone() -> bool:
        try:
            return psutil.Process(holder_state["pid"]).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    # The holder exits right after its last release; give it that moment.
    kit.wait_for(holder_gone, 5, f"holder pid {holder_state['pid']} to exit", interval=0.05)
    sandbox = (holder_state.get("sandbox") or {}).get("path")
    assert not sandbox or not Path(sandbox).exists(), f"cgroup {sandbox} left behind"
    assert not build_processes(holder_state["name"])


def the_locks(kit: ServiceKit, props: dict, holder_state: dict) -> list[Path]:
    tree = str(Path(props["source_tree"]).resolve())
    llcs = [LLC_LOCKS / f"ktstr-llc-{i}.lock" for i in holder_state["plan"]["llcs"]]
    return [source_lock_path(tree, kit.cache_dir), *llcs]


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

        t0 = time.monotonic()
        kit.start()  # what `make run` does: the master again; the worker still runs
        retried = kit.wait_build("mk", after_buildid=first, finished=True, timeout=90)
        other = kit.wait_build("queued", finished=True, timeout=max(1, 90 - (time.monotonic() - t0)))
        assert time.monotonic() - t0 < 90
        assert retried["results"] == other["results"] == kit.SUCCESS
