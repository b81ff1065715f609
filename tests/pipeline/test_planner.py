"""Cap resolution, the allowed-CPU seam, and the pure LLC plan on recorded machines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ktstr_steps import planner
from ktstr_steps.errors import KtstrError, ResourceContention
from ktstr_steps.topology import HostTopology
from tests.support import sysfs_fixtures


def machine(tmp_path: Path, name: str) -> HostTopology:
    return HostTopology.from_sysfs(sysfs_fixtures.build(tmp_path, name), quiet=True)


def plan(topo, cap, allowed, holders=None, exclusive=None) -> planner.LlcPlan:
    target = planner.target_cpus(cap, allowed)
    chosen = planner.plan_llcs(topo, target, allowed, holders or {}, exclusive or set())
    return planner.materialise(topo, chosen, target, allowed)


# -- resolve_cap --------------------------------------------------------------------


def test_cli_cap_wins_over_env():
    assert planner.resolve_cap(4, env={"KTSTR_CPU_CAP": "2"}) == 4
    assert planner.resolve_cap("3", env={}) == 3


def test_env_cap_used_without_flag_and_empty_means_none():
    assert planner.resolve_cap(None, env={"KTSTR_CPU_CAP": "6"}) == 6
    assert planner.resolve_cap(None, env={"KTSTR_CPU_CAP": ""}) is None
    assert planner.resolve_cap(None, env={}) is None


@pytest.mark.parametrize("value", [0, "0", -1, "-1"])
def test_cli_cap_below_one_is_rejected_with_ktstr_message(value):
    with pytest.raises(KtstrError) as exc:
        planner.resolve_cap(value, env={})
    assert str(exc.value) == f"--cpu-cap must be ≥ 1 CPU (got {int(value)})"


def test_cli_cap_not_an_integer():
    with pytest.raises(KtstrError, match=r"--cpu-cap is not a valid integer: 'abc'"):
        planner.resolve_cap("abc", env={})


def test_env_cap_zero_and_garbage_and_negative():
    with pytest.raises(KtstrError, match=r"--cpu-cap must be ≥ 1 CPU \(got 0\)"):
        planner.resolve_cap(None, env={"KTSTR_CPU_CAP": "0"})
    with pytest.raises(KtstrError, match=r"^KTSTR_CPU_CAP is not a valid integer: 'abc'"):
        planner.resolve_cap(None, env={"KTSTR_CPU_CAP": "abc"})
    with pytest.raises(KtstrError, match=r"^KTSTR_CPU_CAP is not a valid integer: '-1'"):
        planner.resolve_cap(None, env={"KTSTR_CPU_CAP": "-1"})


def test_env_cap_non_utf8_both_as_os_environ_string_and_as_bytes():
    surrogate = os.fsdecode(b"\xff4")  # what os.environ holds for a non-UTF-8 value
    with pytest.raises(KtstrError, match="KTSTR_CPU_CAP is not valid UTF-8"):
        planner.resolve_cap(None, env={"KTSTR_CPU_CAP": surrogate})
    with pytest.raises(KtstrError, match="KTSTR_CPU_CAP is not valid UTF-8"):
        planner.resolve_cap(None, env={"KTSTR_CPU_CAP": b"\xff4"})


def test_resolve_cap_reads_the_real_environment(monkeypatch):
    monkeypatch.setenv("KTSTR_CPU_CAP", "2")
    assert planner.resolve_cap(None) == 2


# -- allowed CPUs and target ----------------------------------------------------------


def test_allowed_cpus_defaults_to_this_process_affinity():
    assert planner.allowed_cpus(env={}) == os.sched_getaffinity(0)


def test_allowed_cpus_seam_from_env(monkeypatch):
    monkeypatch.setenv("KTSTR_CI_ALLOWED_CPUS", "0-15,32-47")
    assert planner.allowed_cpus() == set(range(16)) | set(range(32, 48))


@pytest.mark.parametrize("bad", ["x-y", "5-1"])
def test_allowed_cpus_seam_rejects_garbage(bad):
    with pytest.raises(KtstrError, match="KTSTR_CI_ALLOWED_CPUS"):
        planner.allowed_cpus(env={"KTSTR_CI_ALLOWED_CPUS": bad})


def test_target_default_is_thirty_percent_rounded_up_at_least_one():
    assert planner.target_cpus(None, set(range(16))) == 5
    assert planner.target_cpus(None, {0, 1}) == 1
    assert planner.target_cpus(None, {0}) == 1
    assert planner.target_cpus(7, set(range(16))) == 7


def test_cap_above_allowed_is_resource_contention():
    with pytest.raises(ResourceContention) as exc:
        planner.target_cpus(99999, set(range(16)))
    assert "--cpu-cap 99999 = 99999 exceeds the 16 CPUs this process is allowed on" in str(
        exc.value
    )


# -- plan on recorded machines ----------------------------------------------------------


def test_intel_small_cap_stays_in_one_llc(tmp_path):
    topo = machine(tmp_path, "intel2s")
    p = plan(topo, 4, set(range(16)))
    assert (p.llcs, p.cpus, p.mems, p.make_jobs, p.cross_node) == ([0], [0, 1, 2, 3], [0], 4, False)
    assert planner.cross_node_warning(p, topo) is None
    assert p.to_json() == {"llcs": [0], "cpus": [0, 1, 2, 3], "mems": [0], "make_jobs": 4,
                           "cross_node": False}  # fmt: skip


def test_intel_default_cap_takes_sibling_threads_of_the_first_llc(tmp_path):
    p = plan(machine(tmp_path, "intel2s"), None, set(range(16)))
    assert p.llcs == [0] and p.cpus == [0, 1, 2, 3, 8] and p.make_jobs == 5


def test_intel_cap_over_one_socket_spills_with_ktstr_warning(tmp_path):
    topo = machine(tmp_path, "intel2s")
    p = plan(topo, 10, set(range(16)))
    assert p.llcs == [0, 1]
    # LLC 0 whole (8 CPUs), then the first 2 of LLC 1: exactly the cap.
    assert p.cpus == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11] and p.mems == [0, 1] and p.cross_node
    assert planner.cross_node_warning(p, topo) == (
        "ktstr: reserving LLCs [0 (node 0), 1 (node 1)] across 2 NUMA nodes "
        "(preferred single-node contiguous unavailable). Build will run; "
        "memory-access latency may be higher."
    )


def test_epyc_consolidates_onto_a_shared_llc_then_fills_its_node_then_nearest_node(tmp_path):
    topo = machine(tmp_path, "epyc")
    allowed = set(range(32))
    assert plan(topo, 4, allowed, holders={5: 1}).llcs == [5]
    assert plan(topo, 8, allowed, holders={5: 1}).llcs == [4, 5]  # same node (2) first
    # 12 CPUs: node 2 gives 8, then node 3 (distance 12) before nodes 0/1 (32).
    p = plan(topo, 12, allowed, holders={5: 1})
    assert p.llcs == [4, 5, 6] and p.mems == [2, 3]
    assert "[4 (node 2), 5 (node 2), 6 (node 3)] across 2 NUMA nodes" in planner.cross_node_warning(
        p, topo
    )


def test_epyc_more_holders_rank_first(tmp_path):
    topo = machine(tmp_path, "epyc")
    assert plan(topo, 4, set(range(32)), holders={1: 1, 6: 3}).llcs == [6]


def test_epyc_no_holders_starts_at_lowest_index(tmp_path):
    p = plan(machine(tmp_path, "epyc"), 8, set(range(32)))
    assert p.llcs == [0, 1] and p.mems == [0] and p.cpus == [0, 1, 2, 3, 16, 17, 18, 19]


def test_exclusive_llc_is_never_preferred_even_with_holders(tmp_path):
    # ktstr would rank LLC 5 first (it has a holder) and then fail to take it.
    topo = machine(tmp_path, "epyc")
    assert plan(topo, 8, set(range(32)), holders={5: 1}, exclusive={5}).llcs == [0, 1]
    # Its node-mate is still fine to use when it is the consolidation target.
    assert plan(topo, 4, set(range(32)), holders={4: 1, 5: 1}, exclusive={5}).llcs == [4]


def test_exclusive_llc_chosen_only_when_nothing_else_fits(tmp_path):
    topo = machine(tmp_path, "intel2s")
    allowed = set(range(16))
    assert plan(topo, 8, allowed, holders={0: 1}, exclusive={0}).llcs == [1]
    assert plan(topo, 9, allowed, holders={0: 1}, exclusive={0}).llcs == [0, 1]
    assert plan(topo, 16, allowed, holders={0: 1}, exclusive={0}).llcs == [0, 1]


def test_allowed_seam_restricts_the_plan_to_that_machines_cpus(tmp_path):
    topo = machine(tmp_path, "epyc")
    socket1 = set(range(8, 16)) | set(range(24, 32))
    p = plan(topo, 6, socket1)
    assert p.llcs == [4, 5] and set(p.cpus) <= socket1 and p.mems == [2]


def test_partially_allowed_llc_contributes_only_allowed_cpus(tmp_path):
    topo = machine(tmp_path, "intel2s")
    allowed = {0, 1, 4, 5, 6, 7}
    p = plan(topo, 4, allowed)
    # LLC 0 contributes 2, LLC 1 contributes 4: LLC 0 first (index), then node 1.
    assert p.llcs == [0, 1] and p.cpus == [0, 1, 4, 5]


def test_memory_only_node_never_appears_in_mems(tmp_path):
    topo = machine(tmp_path, "cxl")
    p = plan(topo, 8, set(range(8)))
    assert p.llcs == [0, 1] and p.mems == [0] and not p.cross_node


def test_offline_and_sparse_machines(tmp_path):
    off = machine(tmp_path, "offline")
    assert plan(off, 3, set(off.online_cpus)).llcs == [0]
    p = plan(off, 5, set(off.online_cpus))
    assert p.llcs == [0, 1] and p.cpus == [0, 1, 2, 4, 5] and p.mems == [0, 1]
    sp = machine(tmp_path, "sparse")
    p = plan(sp, 6, set(sp.online_cpus))
    assert p.cpus == [0, 1, 2, 3, 8, 9] and p.mems == [0, 2]
    assert "[0 (node 0), 1 (node 2)]" in planner.cross_node_warning(p, sp)


def test_no_llc_overlaps_allowed_set(tmp_path):
    topo = machine(tmp_path, "intel2s")
    with pytest.raises(KtstrError) as exc:
        planner.plan_llcs(topo, 1, {100, 101}, {}, set())
    assert "no host LLC overlaps the process's 2-CPU allowed set" in str(exc.value)


def test_dry_run_on_recorded_machine_reads_holders_but_creates_nothing(tmp_path):
    topo = machine(tmp_path, "intel2s")
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    p = planner.dry_run_plan(topo, 4, allowed=set(range(16)), lock_dir=lock_dir)
    assert p.llcs == [0] and p.locks == [] and not p.held
    assert list(lock_dir.iterdir()) == []


def test_exclusive_llc_not_taken_by_the_node_walk_while_others_suffice(tmp_path):
    # 28 CPUs = every LLC but the exclusively held one. Walking nodes from the
    # anchor would reach LLC 1 (node 0) before the far nodes; it must not.
    topo = machine(tmp_path, "epyc")
    p = plan(topo, 28, set(range(32)), holders={1: 1}, exclusive={1})
    assert p.llcs == [0, 2, 3, 4, 5, 6, 7] and len(p.cpus) == 28
