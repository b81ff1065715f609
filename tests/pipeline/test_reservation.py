"""The build reservation (ktstr's LLC flocks and the cpuset sandbox), its release order and
the nothing-left-held rules.

These take real LLC flocks (in a per-test lock directory, so they never contend
with a real build on this host) and create real v1 cpuset cgroups; the process
moved into the sandbox is a helper child, not the pytest process.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ktstr_steps import flock, planner
from ktstr_steps.cgroups import CgroupEnv
from ktstr_steps.errors import KtstrError
from ktstr_steps.reservation import BYPASS_CONFLICT, BuildReservation, acquire_build_reservation
from tests.support import sysfs_fixtures

EXACT_CONFLICT = (
    "--cpu-cap conflicts with KTSTR_BYPASS_LLC_LOCKS=1; unset one of them. --cpu-cap is a "
    "resource contract; bypass disables the contract entirely."
)


@pytest.fixture
def child():
    p = subprocess.Popen(["sleep", "60"])
    yield p
    p.kill()
    p.wait()


def _lock_holders(lock_dir: Path) -> dict[str, list[int]]:
    return {p.name: [h.pid for h in flock.holders(p)] for p in sorted(lock_dir.glob("ktstr-llc-*.lock"))}


@pytest.mark.parametrize("value", ["1", "0", "yes"])
def test_bypass_returns_no_reservation(monkeypatch, value: str) -> None:
    monkeypatch.setenv("KTSTR_BYPASS_LLC_LOCKS", value)  # any non-empty value, even "0"
    r = acquire_build_reservation(None)
    assert r.plan is None and r.sandbox is None and r.make_jobs is None
    assert r.bypass
    assert r.to_json() == {"bypass": True, "plan": None, "sandbox": {"kind": "none", "path": None},
                           "make_jobs": None}
    r.release()


def test_bypass_with_cap_errors_with_resource_contract(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KTSTR_BYPASS_LLC_LOCKS", "1")
    with pytest.raises(KtstrError) as ei:
        acquire_build_reservation(2, lock_dir=tmp_path)
    assert "resource contract" in str(ei.value)
    assert str(ei.value) == "ktstr-ci: " + EXACT_CONFLICT == BYPASS_CONFLICT
    assert list(tmp_path.iterdir()) == []


def test_bypass_does_not_touch_sysfs(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KTSTR_SYSFS_ROOT", str(tmp_path / "does-not-exist"))
    # Without bypass the same setting is an error: sysfs really would be read.
    with pytest.raises(KtstrError, match="KTSTR_SYSFS_ROOT="):
        acquire_build_reservation(None, lock_dir=tmp_path)
    monkeypatch.setenv("KTSTR_BYPASS_LLC_LOCKS", "1")
    r = acquire_build_reservation(None, lock_dir=tmp_path)
    assert r.plan is None and r.sandbox is None and r.make_jobs is None


def test_plan_make_jobs_and_sandbox_agree(tmp_path: Path, child) -> None:
    r = acquire_build_reservation(None, lock_dir=tmp_path, pid=child.pid)
    try:
        assert r.plan is not None and r.make_jobs is not None and r.sandbox is not None
        assert r.make_jobs == max(1, len(r.plan.cpus)) == r.plan.make_jobs
        # this host: 2 CPUs, one LLC -> 30 % = 1 CPU, LLC 0 locked whole
        assert r.plan.llcs == [0] and r.plan.cpus == [0] and r.plan.mems == [0]
        assert r.sandbox.kind == "v1"
        assert r.sandbox.path.name.endswith(f"-{child.pid}")
        assert (r.sandbox.path / "cgroup.procs").read_text().split() == [str(child.pid)]
        status = Path(f"/proc/{child.pid}/status").read_text()
        assert "Cpus_allowed_list:\t0\n" in status
        assert _lock_holders(tmp_path) == {"ktstr-llc-0.lock": [os.getpid()]}
        j = r.to_json()
        assert j["plan"] == {"llcs": [0], "cpus": [0], "mems": [0], "make_jobs": 1, "cross_node": False}
        assert j["sandbox"] == {"kind": "v1", "path": str(r.sandbox.path)}
    finally:
        path = r.sandbox.path
        r.release()
    assert not path.exists()
    assert _lock_holders(tmp_path) == {"ktstr-llc-0.lock": []}
    r.release()  # idempotent


def test_repr_lists_sandbox_before_plan() -> None:
    text = repr(BuildReservation(sandbox=None, plan=None, make_jobs=None))
    assert text.index("sandbox") < text.index("plan") < text.index("make_jobs")


def test_release_tears_down_sandbox_before_llc_locks(tmp_path: Path, child) -> None:
    events: list[tuple[str, object]] = []
    r = acquire_build_reservation(1, lock_dir=tmp_path, pid=child.pid)
    lock = tmp_path / "ktstr-llc-0.lock"
    sandbox_dir = r.sandbox.path
    real_teardown, real_release = r.sandbox.teardown, r.plan.release

    def teardown(tag: str | None = None) -> None:
        # while the cgroup goes away the LLC must still be reserved
        events.append(("sandbox", [h.pid for h in flock.holders(lock)]))
        real_teardown(tag)

    def release() -> None:
        events.append(("llc", sandbox_dir.exists()))
        real_release()

    r.sandbox.teardown, r.plan.release = teardown, release
    with r:
        pass
    assert events == [("sandbox", [os.getpid()]), ("llc", False)]
    assert flock.holders(lock) == []


def test_sandbox_failure_leaves_nothing_held(tmp_path: Path, child) -> None:
    env = CgroupEnv(use_v1=False)  # no usable cpuset at all on this host
    with pytest.raises(KtstrError, match="This host cannot enforce the resource budget"):
        acquire_build_reservation(1, lock_dir=tmp_path, pid=child.pid, sandbox_env=env)
    assert _lock_holders(tmp_path) == {"ktstr-llc-0.lock": []}
    # without a cap the same host degrades silently and still reserves
    r = acquire_build_reservation(None, lock_dir=tmp_path, pid=child.pid, sandbox_env=env)
    assert r.sandbox.kind == "none" and r.plan is not None and r.make_jobs == 1
    r.release()
    assert _lock_holders(tmp_path) == {"ktstr-llc-0.lock": []}


def test_sysfs_unreadable_errors_with_cap_warns_without(monkeypatch, tmp_path: Path, capfd) -> None:
    empty = tmp_path / "sys"
    empty.mkdir()
    monkeypatch.setenv("KTSTR_SYSFS_ROOT", str(empty))
    with pytest.raises(KtstrError, match="--cpu-cap set but host LLC topology unreadable from sysfs"):
        acquire_build_reservation(1, lock_dir=tmp_path)
    r = acquire_build_reservation(None, lock_dir=tmp_path)
    assert r.plan is None and r.sandbox is None and r.make_jobs is None and not r.bypass
    assert "could not read host LLC topology from sysfs; skipping kernel-build LLC reservation" in (
        capfd.readouterr().err
    )
    assert not list(tmp_path.glob("ktstr-llc-*.lock"))


def test_cross_node_plan_prints_spill_warning(tmp_path: Path, capfd) -> None:
    """A recorded 2-socket machine: 30 % fits node 0 (silent); cap 12 spills (warning)."""
    from ktstr_steps.topology import HostTopology

    topo = HostTopology.from_sysfs(sysfs_fixtures.build(tmp_path, "intel2s"), quiet=True)
    locks = tmp_path / "locks"
    no_cgroups = CgroupEnv(use_v1=False, use_v2=False)
    r = acquire_build_reservation(None, topo=topo, allowed=set(range(16)), lock_dir=locks,
                                  sandbox_env=no_cgroups)
    assert r.plan.mems == [0] and r.make_jobs == 5 and r.sandbox.kind == "none"
    assert "NUMA nodes" not in capfd.readouterr().err
    r.release()
    # cap 12 > 8 CPUs per node: the plan spills and says so before the sandbox
    # step; that step then fails (a cap needs a real sandbox) and frees the LLCs.
    with pytest.raises(KtstrError, match="cannot enforce"):
        acquire_build_reservation(12, topo=topo, allowed=set(range(16)), lock_dir=locks,
                                  sandbox_env=no_cgroups)
    err = capfd.readouterr().err
    assert "ktstr: reserving LLCs [0 (node 0), 1 (node 1)] across 2 NUMA nodes" in err
    assert all(not holders for holders in _lock_holders(locks).values())


def test_resource_contention_leaves_nothing(tmp_path: Path) -> None:
    lock = planner.llc_lock_path(0, tmp_path)
    with flock.FileLock.try_acquire(lock, exclusive=True):
        with pytest.raises(KtstrError) as ei:
            acquire_build_reservation(None, lock_dir=tmp_path)
        assert ei.value.kind == "resource-contention"
    assert [p.name for p in Path("/sys/fs/cgroup/cpuset").iterdir()
            if p.name.startswith("ktstr-build-") and p.name.endswith(f"-{os.getpid()}")] == []
