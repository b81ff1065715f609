"""The holder end to end: real `ktstr-ci holder ...` processes, real flocks, real v1 cgroups, real signals.

Each test has its own run dir and cache (conftest) and its own LLC lock dir
(hidden ``--lock-dir``), so nothing here contends with a real build.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ktstr_steps import flock, holder
from ktstr_steps.errors import KtstrError
from ktstr_steps.tree_lock import source_lock_path
from tests.support.holderkit import acquire, cli


def llc_holders(lock_dir: Path) -> list[int]:
    return sorted({h.pid for p in lock_dir.glob("ktstr-llc-*.lock") for h in flock.holders(p)})


def wait_gone(pid: int, paths: list[Path], lock_dir: Path, limit: float = 5.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if not holder.pid_alive(pid) and not any(p.exists() for p in paths) and not llc_holders(lock_dir):
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(
        f"after {limit}s: alive={holder.pid_alive(pid)} paths={[p for p in paths if p.exists()]} "
        f"llc={llc_holders(lock_dir)}"
    )


def test_acquire_run_release(lock_dir: Path, owner, tmp_path: Path) -> None:
    st = acquire("b-1", lock_dir, "--owner-pid", str(owner.pid))
    pid = st["pid"]
    assert st["name"] == "b-1" and st["bypass"] is False
    assert st["plan"] == {"llcs": [0], "cpus": [0], "mems": [0], "make_jobs": 1, "cross_node": False}
    assert st["sandbox"]["kind"] == "v1"
    cg = Path(st["sandbox"]["path"])
    assert cg.name.endswith(f"-{pid}") and cg.is_dir()
    # state file on disk, written atomically, same content
    on_disk = json.loads((tmp_path / "run" / "holders" / "b-1.json").read_text())
    assert on_disk["pid"] == pid and on_disk["sandbox"] == st["sandbox"]
    # the LLC flock belongs to the holder process, which sits in its own sandbox
    assert llc_holders(lock_dir) == [pid]
    assert str(pid) in (cg / "cgroup.procs").read_text().split()

    r = cli("holder", "run", "--name", "b-1", "--", "sh", "-c",
            "cat /proc/self/status /proc/self/cgroup; exit 7")
    assert r.returncode == 7, r.stderr  # CMD's status
    status = dict(line.split(":", 1) for line in r.stdout.splitlines() if ":" in line and "\t" in line)
    assert status["Cpus_allowed_list"].strip() == "0"
    assert f"cpuset:/{cg.name}" in r.stdout

    s = cli("holder", "status", "--name", "b-1", "--json")
    assert s.returncode == 0 and json.loads(s.stdout)["alive"] is True
    lst = json.loads(cli("holder", "list", "--json").stdout)["holders"]
    assert [h["name"] for h in lst] == ["b-1"]

    rel = cli("holder", "release", "--name", "b-1", "--json")
    assert rel.returncode == 0, rel.stderr
    assert json.loads(rel.stdout) == {"name": "b-1", "released": ["sandbox", "llc-locks"]}
    assert not holder.pid_alive(pid)  # release waits for the exit
    assert not cg.exists() and llc_holders(lock_dir) == []
    assert not (tmp_path / "run" / "holders" / "b-1.json").exists()
    # idempotent for alwaysRun steps
    again = cli("holder", "release", "--name", "b-1", "--json")
    assert again.returncode == 0 and json.loads(again.stdout) == {"name": "b-1", "released": []}
    assert "nothing to release" in again.stderr


def test_join_holder_library(lock_dir: Path, owner) -> None:
    st = acquire("lib", lock_dir, "--owner-pid", str(owner.pid))
    code = (
        "import os, json; from ktstr_steps.holder import join_holder; "
        "st = join_holder('lib'); print(json.dumps([sorted(os.sched_getaffinity(0)), "
        "open('/proc/self/cgroup').read(), st['plan']['make_jobs']]))"
    )
    import sys

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    aff, cgtext, jobs = json.loads(r.stdout)
    assert aff == [0] and jobs == 1 and Path(st["sandbox"]["path"]).name in cgtext
    assert json.loads(cli("holder", "release", "--name", "lib", "--json").stdout)["released"] == [
        "sandbox", "llc-locks"]


def test_lock_source_held_by_holder_and_released_first(lock_dir: Path, owner, tmp_path: Path) -> None:
    st = acquire("src", lock_dir, "--owner-pid", str(owner.pid))
    pid = st["pid"]
    tree = tmp_path / "linux"
    tree.mkdir()
    r = cli("holder", "lock-source", "--name", "src", "--source", str(tree), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    lockfile = source_lock_path(str(tree.resolve()), tmp_path / "kcache")
    assert out == {"name": "src", "lockfile": str(lockfile), "waited_seconds": 0.0, "holders_seen": []}
    # held by the HOLDER (exclusive), not by the command that asked
    assert [(h.pid, h.mode) for h in flock.holders(lockfile)] == [(pid, "WRITE")]

    # a second holder waits on the same tree; the waiting message reaches its command's stderr
    st2 = acquire("src2", lock_dir, "--owner-pid", str(owner.pid))
    waiter = subprocess.Popen(
        ["ktstr-ci", "holder", "lock-source", "--name", "src2", "--source", str(tree), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 10
    while st2["pid"] not in flock.waiters(lockfile) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert st2["pid"] in flock.waiters(lockfile)  # a `->` line: blocked in the holder process

    # release order, observed from outside: the source lock goes first, then the
    # cgroup, then the LLC flock; src2 takes the tree lock when src lets go.
    rel = cli("holder", "release", "--name", "src", "--json")
    assert json.loads(rel.stdout)["released"] == ["source-lock", "sandbox", "llc-locks"]
    wout, werr = waiter.communicate(timeout=10)
    assert waiter.returncode == 0, werr
    assert "is locked by a concurrent ktstr build — waiting for it to finish." in werr
    assert f"pid={pid} cmd=" in werr
    w = json.loads(wout)
    assert w["holders_seen"][0]["pid"] == pid and w["waited_seconds"] > 0
    assert [h.pid for h in flock.holders(lockfile)] == [st2["pid"]]
    cli("holder", "release", "--name", "src2", "--json")
    assert flock.holders(lockfile) == [] and llc_holders(lock_dir) == []


def test_release_order_in_holder_log(lock_dir: Path, owner, tmp_path: Path) -> None:
    st = acquire("ord", lock_dir, "--owner-pid", str(owner.pid))
    cli("holder", "lock-source", "--name", "ord", "--source", str(tmp_path / "t"), "--json")
    cg = Path(st["sandbox"]["path"])
    lockfile = source_lock_path(str((tmp_path / "t").resolve()), tmp_path / "kcache")
    # poll the three resources while release runs and record the order they vanish
    proc = subprocess.Popen(["ktstr-ci", "holder", "release", "--name", "ord", "--json"],
                            stdout=subprocess.PIPE, text=True)
    # Read in REVERSE release order: if a later resource is seen gone, every
    # earlier one must be gone too when read afterwards (removals are permanent).
    snapshots = set()
    while True:
        done = proc.poll() is not None
        llc = bool(llc_holders(lock_dir))
        sandbox = cg.exists()
        src = bool(flock.holders(lockfile))
        snapshots.add((src, sandbox, llc))
        if not llc:
            assert not sandbox and not src, (src, sandbox, llc)
        if not sandbox:
            assert not src, (src, sandbox, llc)
        if done:
            break
    assert (False, False, False) in snapshots and (True, True, True) in snapshots
    proc.communicate()


def test_kill9_owner_releases_within_5s(lock_dir: Path) -> None:
    # Default owner = the parent of `acquire`: here a shell that then sleeps.
    sh = subprocess.Popen(
        ["sh", "-c", f"ktstr-ci holder acquire --name k9 --lock-dir {lock_dir} --json && exec sleep 600"],
        stdout=subprocess.PIPE, text=True,
    )
    st = json.loads(sh.stdout.readline())
    assert st["owner_pid"] == sh.pid
    cg = Path(st["sandbox"]["path"])
    assert cg.exists() and llc_holders(lock_dir) == [st["pid"]]
    os.kill(sh.pid, signal.SIGKILL)
    sh.wait()
    took = wait_gone(st["pid"], [cg, holder.state_path("k9")], lock_dir)
    assert took < 5


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_holder_releases(lock_dir: Path, owner, sig) -> None:
    st = acquire("sig", lock_dir, "--owner-pid", str(owner.pid))
    cg = Path(st["sandbox"]["path"])
    os.kill(st["pid"], sig)
    wait_gone(st["pid"], [cg, holder.state_path("sig")], lock_dir)
    assert "released sandbox, llc-locks (signal" in holder.log_path("sig").read_text()


def test_max_lifetime_releases(lock_dir: Path, owner) -> None:
    st = acquire("life", lock_dir, "--owner-pid", str(owner.pid), "--max-lifetime", "1")
    cg = Path(st["sandbox"]["path"])
    assert cg.exists()
    took = wait_gone(st["pid"], [cg], lock_dir, limit=5)
    assert took >= 0.3  # it did live for a while
    assert "max lifetime 1s passed" in holder.log_path("life").read_text()


def test_stale_holder_swept_at_acquire(lock_dir: Path, owner, tmp_path: Path) -> None:
    st = acquire("stale", lock_dir, "--owner-pid", str(owner.pid))
    cg = Path(st["sandbox"]["path"])
    # kill -9 the holder itself: its flocks die with it, its cgroup and state stay behind
    os.kill(st["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while holder.pid_alive(st["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert llc_holders(lock_dir) == []
    assert holder.state_path("stale").exists() and cg.exists()
    s = json.loads(cli("holder", "status", "--name", "stale", "--json").stdout)
    assert s["alive"] is False
    # `run` refuses a dead holder clearly
    r = cli("holder", "run", "--name", "stale", "--", "true")
    assert r.returncode == 1 and f"reservation lost: holder pid {st['pid']} died" in r.stderr
    # the next acquire (any name) sweeps it
    st2 = acquire("fresh", lock_dir, "--owner-pid", str(owner.pid))
    assert not holder.state_path("stale").exists() and not cg.exists()
    assert json.loads(cli("holder", "release", "--name", "fresh", "--json").stdout)["released"]
    assert not Path(st2["sandbox"]["path"]).exists()


def test_release_of_dead_holder_cleans_its_cgroup(lock_dir: Path, owner) -> None:
    st = acquire("dead", lock_dir, "--owner-pid", str(owner.pid))
    cg = Path(st["sandbox"]["path"])
    os.kill(st["pid"], signal.SIGKILL)
    while holder.pid_alive(st["pid"]):
        time.sleep(0.05)
    r = cli("holder", "release", "--name", "dead", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"name": "dead", "released": ["sandbox"]}
    assert not cg.exists() and not holder.state_path("dead").exists()


BAD_NAMES = ["", "a/b", "x" * 101, "sp ace", "ü", "../x"]


def test_bad_name_rejected(lock_dir: Path) -> None:
    for name in BAD_NAMES:
        for fn in (holder.check_name, holder.state_path, holder.release, holder.status,
                   holder.join_holder, holder.acquire):
            with pytest.raises(KtstrError, match="invalid holder name") as ei:
                fn(name)
            assert ei.value.kind == "invalid-holder-name"
    for args in (("acquire", "--lock-dir", str(lock_dir)), ("release",)):
        r = cli("holder", args[0], "--name", "a/b", *args[1:], "--json")
        assert r.returncode == 1 and "invalid holder name 'a/b'" in r.stderr
        assert json.loads(r.stdout)["errors"][0]["kind"] == "invalid-holder-name"
    assert list(lock_dir.iterdir()) == []
    assert not (holder.holders_dir()).exists()


@pytest.mark.parametrize("cap,msg", [("0", "--cpu-cap must be ≥ 1 CPU (got 0)"),
                                     ("-1", "--cpu-cap must be ≥ 1"),
                                     ("99999", "exceeds")])
def test_bad_cap_leaves_nothing(cap: str, msg: str, lock_dir: Path, owner) -> None:
    start_ns = time.time_ns()
    r = cli("holder", "acquire", "--name", "cap", "--cpu-cap", cap, "--lock-dir", str(lock_dir),
            "--owner-pid", str(owner.pid), "--json")
    assert r.returncode == 1 and msg in r.stderr, r.stderr
    assert json.loads(r.stdout)["ok"] is False
    assert llc_holders(lock_dir) == [] and not holder.state_path("cap").exists()
    assert not [p for p in Path("/sys/fs/cgroup/cpuset").iterdir() if p.name.startswith("ktstr-build-")
                and int(p.name.split("-")[2]) > start_ns
                and not holder.pid_alive(int(p.name.split("-")[3]))]  # other users' live builds are fine


def test_contention_fails_cleanly_and_names_holder(lock_dir: Path, owner) -> None:
    lock = lock_dir / "ktstr-llc-0.lock"
    with flock.FileLock.try_acquire(lock, exclusive=True):  # a perf-mode run on LLC 0
        r = cli("holder", "acquire", "--name", "busy", "--wait", "1", "--lock-dir", str(lock_dir),
                "--owner-pid", str(owner.pid), "--json")
    assert r.returncode == 1
    err = json.loads(r.stdout)["errors"][0]
    assert err["kind"] == "resource-contention"
    assert f"pid={os.getpid()}" in r.stderr
    assert not holder.state_path("busy").exists()
    assert llc_holders(lock_dir) == []


def test_sigterm_to_acquire_while_waiting_leaves_nothing(lock_dir: Path, owner) -> None:
    lock = lock_dir / "ktstr-llc-0.lock"
    with flock.FileLock.try_acquire(lock, exclusive=True):
        p = subprocess.Popen(["ktstr-ci", "holder", "acquire", "--name", "w", "--wait", "60",
                              "--lock-dir", str(lock_dir), "--owner-pid", str(owner.pid), "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        p.send_signal(signal.SIGTERM)  # Buildbot interrupting the Reserve step
        out, err = p.communicate(timeout=20)
    assert p.returncode == 1
    assert "interrupted while acquiring" in err
    assert json.loads(out)["errors"][0]["kind"] == "interrupted"
    assert llc_holders(lock_dir) == [] and not holder.state_path("w").exists()


def test_bypass_holder(lock_dir: Path, owner, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KTSTR_BYPASS_LLC_LOCKS", "1")
    st = acquire("bp", lock_dir, "--owner-pid", str(owner.pid))
    assert st["bypass"] is True and st["plan"] is None and st["sandbox"] == {"kind": "none", "path": None}
    r = cli("holder", "acquire", "--name", "bp2", "--cpu-cap", "1", "--lock-dir", str(lock_dir),
            "--owner-pid", str(owner.pid), "--json")
    assert r.returncode == 1 and "resource contract" in r.stderr
    assert json.loads(cli("holder", "release", "--name", "bp", "--json").stdout)["released"] == []


def test_duplicate_name_refused(lock_dir: Path, owner) -> None:
    st = acquire("dup", lock_dir, "--owner-pid", str(owner.pid))
    r = cli("holder", "acquire", "--name", "dup", "--lock-dir", str(lock_dir), "--owner-pid",
            str(owner.pid), "--json")
    assert r.returncode == 1 and "already exists" in r.stderr
    assert holder.pid_alive(st["pid"])
    cli("holder", "release", "--name", "dup", "--json")


def test_run_dir_default(monkeypatch) -> None:
    monkeypatch.delenv("KTSTR_CI_RUN_DIR")
    expected = Path("/run/ktstr-ci") if os.access("/run", os.W_OK) else Path("/tmp/ktstr-ci-run")
    assert holder.run_dir() == expected
