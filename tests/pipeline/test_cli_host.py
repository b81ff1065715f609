"""``ktstr-ci topology|plan|locks``: run as the installed command, JSON shapes and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ktstr_steps import flock, planner
from ktstr_steps.tree_lock import acquire_source_tree_lock
from tests.support import sysfs_fixtures

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX if sys.argv[2] == "ex" else fcntl.LOCK_SH)
print("held", flush=True)
time.sleep(60)
"""


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ktstr-ci", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


@pytest.fixture
def holder(lock_holding_processes):
    def start(path: Path, mode: str) -> subprocess.Popen:
        path.parent.mkdir(parents=True, exist_ok=True)
        return lock_holding_processes(HOLD, path, mode)

    return start


def test_topology_json_on_recorded_epyc(tmp_path):
    root = sysfs_fixtures.build(tmp_path, "epyc")
    r = run("topology", "--json", env={"KTSTR_SYSFS_ROOT": str(root)})
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["online_cpus"] == list(range(32))
    assert [(x["index"], x["cache_id"], x["node"]) for x in j["llcs"]][3:5] == [
        (3, 3, 1),
        (4, 8, 2),
    ]
    assert set(j["llcs"][0]) >= {"index", "level", "cpus", "node", "cache_id", "size"}
    assert [n["id"] for n in j["nodes"]] == [0, 1, 2, 3]
    assert j["smt"]["threads_per_core"] == 2


def test_topology_text_on_this_host():
    r = run("topology")
    assert r.returncode == 0, r.stderr
    assert "online CPUs:" in r.stdout and "LLC" in r.stdout and "L3" in r.stdout


def test_topology_bad_sysfs_root_exits_1_with_json_error(tmp_path):
    r = run("topology", "--json", env={"KTSTR_SYSFS_ROOT": str(tmp_path / "missing")})
    assert r.returncode == 1
    assert "ktstr-ci: error: KTSTR_SYSFS_ROOT=" in r.stderr
    j = json.loads(r.stdout)
    assert j["ok"] is False and j["errors"][0]["kind"] == "sysfs-root-invalid"
    assert "KTSTR_SYSFS_ROOT" in j["errors"][0]["message"]
    half = sysfs_fixtures.build(tmp_path, "halfempty")
    r = run("topology", "--json", env={"KTSTR_SYSFS_ROOT": str(half)})
    assert r.returncode == 1 and json.loads(r.stdout)["errors"][0]["kind"] == "sysfs-unreadable"


def test_plan_json_on_recorded_machine_uses_the_allowed_seam_and_takes_no_lock(tmp_path):
    root = sysfs_fixtures.build(tmp_path, "intel2s")
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    env = {"KTSTR_SYSFS_ROOT": str(root), "KTSTR_CI_ALLOWED_CPUS": "0-15"}
    r = run("plan", "--cpu-cap", "10", "--json", "--lock-dir", str(lock_dir), env=env)
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert {k: j[k] for k in ("llcs", "cpus", "mems", "make_jobs", "cross_node")} == {
        "llcs": [0, 1],
        "cpus": [0, 1, 2, 3, 4, 5, 8, 9, 10, 11],
        "mems": [0, 1],
        "make_jobs": 10,
        "cross_node": True,
    }
    assert "ktstr: reserving LLCs [0 (node 0), 1 (node 1)] across 2 NUMA nodes" in r.stderr
    assert list(lock_dir.iterdir()) == []


def test_plan_avoids_an_exclusively_held_llc(tmp_path, holder):
    root = sysfs_fixtures.build(tmp_path, "intel2s")
    lock_dir = tmp_path / "locks"
    holder(lock_dir / "ktstr-llc-0.lock", "ex")
    env = {"KTSTR_SYSFS_ROOT": str(root), "KTSTR_CI_ALLOWED_CPUS": "0-15"}
    r = run("plan", "--cpu-cap", "4", "--json", "--lock-dir", str(lock_dir), env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["llcs"] == [1]


def test_plan_default_on_this_host():
    r = run("plan", "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    n = len(os.sched_getaffinity(0))
    assert j["make_jobs"] == max(1, -(-3 * n // 10)) == len(j["cpus"])
    assert j["llcs"] == [0] and j["cross_node"] is False


@pytest.mark.parametrize(
    ("cap", "message"),
    [
        ("0", "--cpu-cap must be ≥ 1 CPU (got 0)"),
        ("-1", "--cpu-cap must be ≥ 1 CPU (got -1)"),
        ("abc", "--cpu-cap is not a valid integer: 'abc'"),
        ("99999", "--cpu-cap 99999 = 99999 exceeds the"),
    ],
)
def test_plan_bad_caps_exit_1_with_message(cap, message):
    r = run("plan", "--cpu-cap", cap, "--json")
    assert r.returncode == 1
    assert message in r.stderr
    assert message in json.loads(r.stdout)["errors"][0]["message"]


def test_plan_bad_env_cap():
    r = run("plan", env={"KTSTR_CPU_CAP": "abc"})
    assert r.returncode == 1 and "KTSTR_CPU_CAP is not a valid integer: 'abc'" in r.stderr


def test_plan_cap_with_bypass_is_the_resource_contract_conflict_even_for_zero():
    r = run("plan", "--cpu-cap", "0", "--json", env={"KTSTR_BYPASS_LLC_LOCKS": "0"})
    assert r.returncode == 1
    assert planner.CAP_BYPASS_CONFLICT in r.stderr and "resource contract" in r.stderr
    assert json.loads(r.stdout)["errors"][0]["kind"] == "resource-contract"
    r = run("plan", env={"KTSTR_BYPASS_LLC_LOCKS": "1", "KTSTR_CPU_CAP": "2"})
    assert r.returncode == 1 and "resource contract" in r.stderr


def test_plan_with_bypass_and_no_cap_reports_no_plan():
    r = run("plan", "--json", env={"KTSTR_BYPASS_LLC_LOCKS": "1"})
    assert r.returncode == 0
    assert json.loads(r.stdout)["bypass"] is True and json.loads(r.stdout)["llcs"] is None


def test_plan_usage_error_exits_2():
    assert run("plan", "--no-such-flag").returncode == 2


def test_locks_lists_llc_cpu_and_source_locks_with_holders_and_waiters(
    tmp_path, holder, isolated_env
):
    lock_dir = tmp_path / "locks"
    ex = holder(lock_dir / "ktstr-llc-1.lock", "ex")
    sh = holder(lock_dir / "ktstr-cpu-3.lock", "sh")
    (lock_dir / "unrelated.lock").write_text("")
    src = acquire_source_tree_lock("/tmp/fake-tree-for-locks", isolated_env)
    try:
        r = run("locks", "--json", "--lock-dir", str(lock_dir))
    finally:
        src.release()
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["cache_root"] == str(isolated_env)
    by_kind = {(e["kind"], e.get("index", e.get("key"))): e for e in j["locks"]}
    assert set(by_kind) == {("llc", 1), ("cpu", 3), ("source", src.path.stem)}
    llc = by_kind[("llc", 1)]
    assert llc["path"] == str(lock_dir / "ktstr-llc-1.lock") and llc["waiters"] == []
    assert [(h["pid"], h["mode"]) for h in llc["holders"]] == [(ex.pid, "WRITE")]
    assert llc["holders"][0]["cmd"].startswith(sys.executable)
    assert [(h["pid"], h["mode"]) for h in by_kind[("cpu", 3)]["holders"]] == [(sh.pid, "READ")]
    assert [h["pid"] for h in by_kind[("source", src.path.stem)]["holders"]] == [os.getpid()]


def test_locks_shows_a_blocked_waiter(tmp_path, holder):
    lock_dir = tmp_path / "locks"
    path = lock_dir / "ktstr-llc-0.lock"
    holder(path, "ex")
    waiter = subprocess.Popen([sys.executable, "-c", HOLD, str(path), "sh"], stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not flock.waiters(path):
            time.sleep(0.02)
        r = run("locks", "--json", "--lock-dir", str(lock_dir))
        assert json.loads(r.stdout)["locks"][0]["waiters"] == [waiter.pid]
        text = run("locks", "--lock-dir", str(lock_dir)).stdout
        assert f"(waiting: {waiter.pid})" in text and "WRITE" in text
    finally:
        waiter.kill()
        waiter.wait()


def test_locks_empty(tmp_path):
    r = run("locks", "--lock-dir", str(tmp_path / "none"))
    assert r.returncode == 0 and "no ktstr lock files" in r.stdout


def test_locks_finds_the_cache_root_by_ktstrs_rules(monkeypatch, tmp_path):
    """``locks`` uses the cache's one root rule: KTSTR_CACHE_DIR, XDG_CACHE_HOME, HOME."""

    def root() -> str:
        r = run("locks", "--json", "--lock-dir", str(tmp_path / "none"))
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["cache_root"]

    monkeypatch.setenv("KTSTR_CACHE_DIR", str(tmp_path / "c"))
    assert root() == str(tmp_path / "c")
    monkeypatch.delenv("KTSTR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert root() == str(tmp_path / "x" / "ktstr" / "kernels")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert root() == str(tmp_path / "h" / ".cache" / "ktstr" / "kernels")
    # A HOME ktstr refuses: the locks of /tmp are still listed, the cache's are not.
    monkeypatch.setenv("HOME", "/")
    assert root() is None
