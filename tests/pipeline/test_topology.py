"""HostTopology.from_sysfs on recorded machine shapes and on this host's real /sys."""

from __future__ import annotations

from pathlib import Path

import pytest

from ktstr_steps.cpulist import parse_cpulist
from ktstr_steps.errors import KtstrError
from ktstr_steps.topology import UNREACHABLE, HostTopology
from tests.support import sysfs_fixtures


def machine(tmp_path: Path, name: str) -> HostTopology:
    return HostTopology.from_sysfs(sysfs_fixtures.build(tmp_path, name), quiet=True)


def llc_table(topo: HostTopology) -> list[tuple]:
    return [(llc.index, llc.level, llc.cache_id, list(llc.cpus), llc.node) for llc in topo.llcs]


def test_intel_two_sockets_smt_one_llc_per_socket_with_interleaved_siblings(tmp_path):
    topo = machine(tmp_path, "intel2s")
    assert topo.online_cpus == list(range(16))
    assert llc_table(topo) == [
        (0, 3, 0, [0, 1, 2, 3, 8, 9, 10, 11], 0),
        (1, 3, 1, [4, 5, 6, 7, 12, 13, 14, 15], 1),
    ]
    assert topo.llcs[0].size == "30720K"
    assert [n.id for n in topo.nodes] == [0, 1]
    assert topo.distance(0, 1) == 21 and topo.distance(1, 1) == 10
    # core_id repeats per socket: siblings pair within a socket, never across.
    sib = topo.smt_siblings()
    assert [0, 8] in sib and [4, 12] in sib and len(sib) == 8
    j = topo.to_json()
    assert j["smt"]["threads_per_core"] == 2 and j["smt"]["enabled"] is True


def test_epyc_ccx_llcs_get_dense_indices_not_raw_cache_ids(tmp_path):
    topo = machine(tmp_path, "epyc")
    assert [llc.cache_id for llc in topo.llcs] == sysfs_fixtures.EPYC_L3_IDS
    assert [llc.index for llc in topo.llcs] == list(range(8))
    assert llc_table(topo)[4] == (4, 3, 8, [8, 9, 24, 25], 2)
    assert [llc.node for llc in topo.llcs] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert topo.llcs_of_node() == {0: [0, 1], 1: [2, 3], 2: [4, 5], 3: [6, 7]}
    assert topo.distance(0, 1) == 12 and topo.distance(0, 3) == 32 and topo.distance(2, 3) == 12
    assert topo.node_of_cpu[16] == 0 and topo.node_of_cpu[31] == 3


def test_offline_cpu_is_left_out_and_short_distance_matrix_falls_back(tmp_path):
    topo = machine(tmp_path, "offline")
    assert topo.online_cpus == [0, 1, 2, 4, 5, 6, 7]
    assert llc_table(topo) == [(0, 3, 0, [0, 1, 2], 0), (1, 3, 1, [4, 5, 6, 7], 1)]
    # node1 has no distance file: the whole matrix becomes 10 / 20, with a warning.
    assert [n.distance for n in topo.nodes] == [(10, 20), (20, 10)]
    assert any("distance" in w for w in topo.warnings)


def test_missing_distance_row_warning_is_printed(tmp_path, capsys):
    HostTopology.from_sysfs(sysfs_fixtures.build(tmp_path, "offline"))
    assert "ktstr-ci: warning: NUMA distance matrix" in capsys.readouterr().err


def test_no_cache_info_anywhere_gives_one_synthetic_llc_and_node_zero(tmp_path):
    topo = machine(tmp_path, "nocache")
    assert llc_table(topo) == [(0, 0, 0, [0, 1, 2, 3], 0)]
    assert [n.id for n in topo.nodes] == [0]  # no node directory at all
    assert topo.distance(0, 0) == 10
    assert topo.smt_siblings() == [[0], [1], [2], [3]]  # core_id fallback = CPU id


def test_cache_without_id_file_is_identified_by_lowest_shared_cpu(tmp_path):
    topo = machine(tmp_path, "armnoid")
    assert llc_table(topo) == [(0, 2, 0, [0, 1, 2, 3], 0), (1, 2, 4, [4, 5, 6, 7], 0)]


def test_cpus_without_cache_info_fall_back_to_identity_zero(tmp_path):
    # ktstr's chain ends in identity 0: cpu2/cpu3 form LLC identity 0, which
    # ranks before the real L3 (id 5). Kept so lock indices agree with ktstr.
    topo = machine(tmp_path, "mixedcache")
    assert llc_table(topo) == [(0, 0, 0, [2, 3], 0), (1, 3, 5, [0, 1], 0)]


def test_memory_only_node_is_a_node_without_cpus_or_llcs(tmp_path):
    topo = machine(tmp_path, "cxl")
    assert [(n.id, list(n.cpus), n.memory_only) for n in topo.nodes] == [
        (0, list(range(8)), False),
        (1, [], True),
    ]
    assert topo.node(1).memory_kb == 128 << 20
    assert topo.llcs_of_node() == {0: [0, 1]}
    assert topo.distance(0, 1) == 20
    j = topo.to_json()
    assert j["nodes"][1]["memory_only"] is True and j["nodes"][1]["cpus"] == []


def test_sparse_cpus_and_sparse_node_ids(tmp_path):
    topo = machine(tmp_path, "sparse")
    assert topo.online_cpus == [0, 1, 2, 3, 8, 9, 10, 11]
    assert llc_table(topo) == [(0, 3, 0, [0, 1, 2, 3], 0), (1, 3, 1, [8, 9, 10, 11], 2)]
    assert topo.node_ids == [0, 2]
    # Distance rows are aligned with the present node ids, not with 0..n.
    assert topo.distance(0, 2) == 20 and topo.distance(2, 2) == 10
    assert topo.distance(0, 1) == UNREACHABLE
    assert topo.to_json()["nodes"][1]["distance_to"] == {"0": 20, "2": 10}


def test_host2_shape_matches_to_json_contract(tmp_path):
    j = machine(tmp_path, "host2").to_json()
    assert j["online_cpus"] == [0, 1]
    assert j["llcs"] == [
        {"index": 0, "level": 3, "cpus": [0, 1], "node": 0, "cache_id": 0, "size": "32768K"}
    ]
    assert [n["id"] for n in j["nodes"]] == [0]
    assert j["smt"]["enabled"] is False


def test_env_root_is_used_when_no_argument(tmp_path, monkeypatch):
    monkeypatch.setenv("KTSTR_SYSFS_ROOT", str(sysfs_fixtures.build(tmp_path, "epyc")))
    topo = HostTopology.from_sysfs(quiet=True)
    assert len(topo.llcs) == 8


def test_env_root_that_does_not_exist_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("KTSTR_SYSFS_ROOT", str(tmp_path / "nope"))
    with pytest.raises(KtstrError) as exc:
        HostTopology.from_sysfs()
    assert "KTSTR_SYSFS_ROOT" in str(exc.value) and str(tmp_path / "nope") in str(exc.value)
    assert exc.value.kind == "sysfs-root-invalid"


def test_half_empty_tree_is_sysfs_unreadable(tmp_path):
    with pytest.raises(KtstrError) as exc:
        machine(tmp_path, "halfempty")
    assert exc.value.kind == "sysfs-unreadable"
    assert "none of them has a directory" in str(exc.value)


@pytest.mark.parametrize("content", [None, "", "\n", "zero-three"])
def test_missing_empty_or_garbled_online_file_names_the_path(tmp_path, content):
    root = tmp_path / "sys"
    cpu = root / "devices" / "system" / "cpu"
    cpu.mkdir(parents=True)
    if content is not None:
        (cpu / "online").write_text(content)
    with pytest.raises(KtstrError) as exc:
        HostTopology.from_sysfs(root)
    assert exc.value.kind == "sysfs-unreadable"
    assert str(cpu / "online") in str(exc.value)


def test_online_cpu_without_directory_is_skipped_with_warning(tmp_path):
    root = sysfs_fixtures.build(tmp_path, "host2")
    (root / "devices" / "system" / "cpu" / "online").write_text("0-2\n")
    topo = HostTopology.from_sysfs(root, quiet=True)
    assert topo.online_cpus == [0, 1]
    assert any("cpu2" in w for w in topo.warnings)


def test_real_host_sysfs_agrees_with_the_kernel():
    topo = HostTopology.from_sysfs()
    online = parse_cpulist(Path("/sys/devices/system/cpu/online").read_text())
    assert topo.online_cpus == online
    assert sorted(c for llc in topo.llcs for c in llc.cpus) == online
    llc_level = max(
        int(p.read_text()) for p in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/level")
    )
    assert topo.llcs[0].level == llc_level
    assert 0 in topo.node_ids
