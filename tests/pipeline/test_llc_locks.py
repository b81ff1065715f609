"""acquire_llc_plan with real flocks held by real other processes, and on this host's /tmp."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ktstr_steps import flock, planner
from ktstr_steps.errors import KtstrError, ResourceContention
from ktstr_steps.topology import HostTopology
from tests.support import sysfs_fixtures

# A stand-in for a ktstr perf-mode run: LOCK_EX on an LLC file until killed
# (or until it has held for argv[3] seconds, to test a wait that succeeds).
PERF_RUN = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX if sys.argv[2] == "ex" else fcntl.LOCK_SH)
print("held", flush=True)
time.sleep(float(sys.argv[3]))
"""


@pytest.fixture
def perf_run(lock_holding_processes):
    def start(path: Path, mode: str = "ex", hold: float = 60.0) -> subprocess.Popen:
        return lock_holding_processes(PERF_RUN, path, mode, hold)

    return start


@pytest.fixture
def intel(tmp_path: Path) -> HostTopology:
    return HostTopology.from_sysfs(sysfs_fixtures.build(tmp_path, "intel2s"), quiet=True)


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tmp"
    d.mkdir()
    return d


ALL16 = set(range(16))


def our_locks(lock_dir: Path) -> list[tuple[str, str]]:
    """(file, mode) of every LLC lock this process holds, from the real /proc/locks."""
    out = []
    for path in sorted(lock_dir.glob("ktstr-llc-*.lock")):
        out += [(path.name, h.mode) for h in flock.holders(path) if h.pid == os.getpid()]
    return out


def test_acquire_takes_shared_locks_in_plan_and_release_drops_them(intel, lock_dir):
    plan = planner.acquire_llc_plan(intel, 10, allowed=ALL16, lock_dir=lock_dir)
    try:
        assert plan.llcs == [0, 1] and plan.make_jobs == 10
        assert our_locks(lock_dir) == [("ktstr-llc-0.lock", "READ"), ("ktstr-llc-1.lock", "READ")]
    finally:
        plan.release()
    assert our_locks(lock_dir) == []
    plan.release()  # idempotent


def test_exclusive_holder_of_llc0_is_avoided(intel, lock_dir, perf_run):
    perf = perf_run(planner.llc_lock_path(0, lock_dir), "ex")
    with planner.acquire_llc_plan(intel, 4, allowed=ALL16, lock_dir=lock_dir) as plan:
        assert plan.llcs == [1] and plan.cpus == [4, 5, 6, 7] and plan.mems == [1]
        assert our_locks(lock_dir) == [("ktstr-llc-1.lock", "READ")]
        # The dry run sees the same picture and takes nothing.
        dry = planner.dry_run_plan(intel, 4, allowed=ALL16, lock_dir=lock_dir)
        assert dry.llcs == [1] and dry.locks == []
    assert perf.poll() is None


def test_shared_holder_is_consolidated_onto(intel, lock_dir, perf_run):
    perf_run(planner.llc_lock_path(1, lock_dir), "sh")
    with planner.acquire_llc_plan(intel, 4, allowed=ALL16, lock_dir=lock_dir) as plan:
        assert plan.llcs == [1]


def test_no_free_llc_without_wait_fails_at_once_like_ktstr(intel, lock_dir, perf_run):
    perf = perf_run(planner.llc_lock_path(0, lock_dir), "ex")
    start = time.monotonic()
    with pytest.raises(ResourceContention) as exc:
        planner.acquire_llc_plan(intel, 16, allowed=ALL16, lock_dir=lock_dir)
    assert time.monotonic() - start < 1.0
    msg = str(exc.value)
    assert msg.startswith("acquire_llc_plan: could not reserve 16 CPU(s) after 2 TOCTOU retry")
    assert f"LLC 0: pid={perf.pid} mode=WRITE" in msg and "locks --json" in msg
    assert our_locks(lock_dir) == []


def test_no_free_llc_waits_names_the_holder_and_times_out_clean(intel, lock_dir, perf_run, capfd):
    perf = perf_run(planner.llc_lock_path(0, lock_dir), "ex")
    start = time.monotonic()
    with pytest.raises(ResourceContention) as exc:
        planner.acquire_llc_plan(intel, 16, allowed=ALL16, lock_dir=lock_dir, wait=1.0)
    waited = time.monotonic() - start
    assert 1.0 <= waited < 4.0
    assert "waited" in str(exc.value) and f"pid={perf.pid}" in str(exc.value)
    err = capfd.readouterr().err
    # One announcement naming pid and command line, then progress lines.
    assert err.count("are busy — waiting up to 1s") == 1
    assert f"pid={perf.pid} mode=WRITE cmd={sys.executable} -c" in err
    assert "ktstr-ci: progress: reserve: waiting" in err
    assert our_locks(lock_dir) == []  # LLC 1 was tried on each retry; none kept


def test_wait_succeeds_when_the_holder_goes_away(intel, lock_dir, perf_run, capfd):
    perf_run(planner.llc_lock_path(0, lock_dir), "ex", hold=0.8)
    start = time.monotonic()
    with planner.acquire_llc_plan(intel, 16, allowed=ALL16, lock_dir=lock_dir, wait=10) as plan:
        assert plan.llcs == [0, 1]
        assert time.monotonic() - start >= 0.5
    assert "reserved LLCs [0, 1] after waiting" in capfd.readouterr().err


def test_unusable_lock_dir_is_a_clear_error(intel, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(KtstrError) as exc:
        planner.acquire_llc_plan(intel, 4, allowed=ALL16, lock_dir=not_a_dir / "sub")
    assert exc.value.kind == "lockfile-unusable"
    assert "cannot create lock directory" in str(exc.value)


def test_unusable_second_lock_file_releases_the_first(intel, lock_dir, monkeypatch):
    # The plan locks LLC 0 then LLC 1; LLC 1's file cannot be opened for the
    # lock attempt (discover already created it): LLC 0 must not stay held.
    real = flock.open_lockfile
    calls = {"n": 0}

    def flaky(path):
        if Path(path).name == "ktstr-llc-1.lock":
            calls["n"] += 1
            if calls["n"] > 1:  # let discover create it, fail the lock attempt
                raise KtstrError(f"cannot open lockfile {path}: boom", kind="lockfile-unusable")
        return real(path)

    monkeypatch.setattr(flock, "open_lockfile", flaky)
    with pytest.raises(KtstrError, match="boom"):
        planner.acquire_llc_plan(intel, 16, allowed=ALL16, lock_dir=lock_dir)
    assert our_locks(lock_dir) == []


def test_lock_file_that_is_a_directory_fails_cleanly(intel, lock_dir):
    (lock_dir / "ktstr-llc-1.lock").mkdir()
    with pytest.raises(KtstrError) as exc:
        planner.acquire_llc_plan(intel, 16, allowed=ALL16, lock_dir=lock_dir)
    assert "ktstr-llc-1.lock" in str(exc.value) and exc.value.kind == "lockfile-unusable"
    assert our_locks(lock_dir) == []


def test_cap_errors_hold_nothing(intel, lock_dir):
    with pytest.raises(ResourceContention, match="exceeds the 16 CPUs"):
        planner.acquire_llc_plan(intel, 99999, allowed=ALL16, lock_dir=lock_dir)
    assert list(lock_dir.iterdir()) == []


def test_real_tmp_lock_on_this_host_is_visible_in_proc_locks_and_released():
    topo = HostTopology.from_sysfs()
    plan = planner.acquire_llc_plan(topo, None, wait=30)
    path = Path("/tmp/ktstr-llc-0.lock")
    try:
        assert plan.llcs == [0]
        mine = [h for h in flock.holders(path) if h.pid == os.getpid()]
        assert [h.mode for h in mine] == ["READ"]
        # The raw /proc/locks line too: FLOCK ADVISORY READ <our pid> <dev>:<inode>.
        ino = os.stat(path).st_ino
        lines = Path("/proc/locks").read_text().splitlines()
        assert any(
            f" {os.getpid()} " in ln and ln.split()[-3].endswith(f":{ino}") and "READ" in ln
            for ln in lines
            if "->" not in ln
        )
    finally:
        plan.release()
    assert [h for h in flock.holders(path) if h.pid == os.getpid()] == []
