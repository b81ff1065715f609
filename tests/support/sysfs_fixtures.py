"""Recorded sysfs trees of real machine shapes, written in code for reviewability.

Each ``MACHINES[name](root)`` writes ``root/devices/system/{cpu,node}/...``
the way the kernel lays them out (``root`` stands for ``/sys``; point
``KTSTR_SYSFS_ROOT`` at it). The shapes follow real hosts:

- ``intel2s``: 2-socket Xeon, 4 cores x 2 threads per socket, one L3 per
  socket, siblings numbered after all first threads (0-7 then 8-15), core_id
  repeats per socket, 2 nodes (10/21).
- ``epyc``: 2-socket EPYC in NPS2: 4 CCXs per socket, each CCX 2 cores x 2
  threads with its own L3 (ids sparse per die: 0-3 and 8-11), 4 nodes with
  distances 10 / 12 (same socket) / 32 (other socket).
- ``offline``: 8 CPUs, cpu3 offline (directory without cache/topology, as the
  kernel leaves it), 2 L3s, node1's distance file missing (matrix fallback).
- ``nocache``: 4 CPUs with no cache directories and no node directory at all
  (a non-NUMA guest kernel).
- ``armnoid``: 8 CPUs in 2 clusters whose highest cache is L2 and whose cache
  index has no ``id`` file (identity from shared_cpu_list).
- ``mixedcache``: 4 CPUs, cpu2 and cpu3 without cache info next to an L3.
- ``cxl``: 8 CPUs, 2 L3s on node0 and a memory-only node1 (CXL expander).
- ``sparse``: online 0-3,8-11 (4-7 never present), nodes 0 and 2 (sparse).
- ``halfempty``: an ``online`` file but no cpuN directories.
- ``host2``: this CI host: 2 CPUs, one L3, one node.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ktstr_steps.cpulist import format_cpulist


def _w(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n")


def cpu_root(root: Path) -> Path:
    return root / "devices" / "system" / "cpu"


def write_online(root: Path, online: list[int]) -> None:
    d = cpu_root(root)
    _w(d / "online", format_cpulist(online))
    _w(d / "possible", format_cpulist(online))


def write_cpu(
    root: Path,
    cpu: int,
    *,
    node: int | None,
    core_id: int | None,
    package: int | None = None,
    caches: list[dict] | None = None,
) -> None:
    """One cpuN directory. ``caches``: dicts with level, type, id (None = no file), shared, size."""
    d = cpu_root(root) / f"cpu{cpu}"
    d.mkdir(parents=True, exist_ok=True)
    if node is not None:
        # The kernel exposes the node as a symlink named nodeK inside cpuN.
        (d / f"node{node}").mkdir(exist_ok=True)
    if core_id is not None:
        _w(d / "topology" / "core_id", str(core_id))
    if package is not None:
        _w(d / "topology" / "physical_package_id", str(package))
    for i, c in enumerate(caches or []):
        idx = d / "cache" / f"index{i}"
        _w(idx / "level", str(c["level"]))
        _w(idx / "type", c.get("type", "Unified"))
        if c.get("id") is not None:
            _w(idx / "id", str(c["id"]))
        _w(idx / "shared_cpu_list", format_cpulist(c["shared"]))
        _w(idx / "size", c.get("size", "32K"))


def standard_caches(
    cpu: int, siblings: list[int], l3_id: int, l3_cpus: list[int], l3_size: str
) -> list[dict]:
    core = min(siblings)
    return [
        {"level": 1, "type": "Data", "id": core, "shared": siblings, "size": "48K"},
        {"level": 1, "type": "Instruction", "id": core, "shared": siblings, "size": "32K"},
        {"level": 2, "type": "Unified", "id": core, "shared": siblings, "size": "2048K"},
        {"level": 3, "type": "Unified", "id": l3_id, "shared": l3_cpus, "size": l3_size},
    ]


def write_node(
    root: Path, node: int, *, cpus: list[int], distance: list[int] | None, mem_kb: int
) -> None:
    d = root / "devices" / "system" / "node" / f"node{node}"
    d.mkdir(parents=True, exist_ok=True)
    _w(d / "cpulist", format_cpulist(cpus))
    if distance is not None:
        _w(d / "distance", " ".join(map(str, distance)))
    _w(
        d / "meminfo",
        f"Node {node} MemTotal:       {mem_kb} kB\nNode {node} MemFree:        {mem_kb // 2} kB\n",
    )


def intel2s(root: Path) -> None:
    online = list(range(16))
    write_online(root, online)
    for cpu in online:
        socket = (cpu // 4) % 2
        core = cpu % 4
        first = socket * 4 + core
        siblings = [first, first + 8]
        l3 = [c for c in online if (c // 4) % 2 == socket]
        write_cpu(
            root,
            cpu,
            node=socket,
            core_id=core,
            package=socket,
            caches=standard_caches(cpu, siblings, socket, l3, "30720K"),
        )
    for n in (0, 1):
        cpus = [c for c in online if (c // 4) % 2 == n]
        write_node(root, n, cpus=cpus, distance=[10, 21] if n == 0 else [21, 10], mem_kb=64 << 20)


EPYC_L3_IDS = [0, 1, 2, 3, 8, 9, 10, 11]  # raw ids per CCX, sparse per die


def epyc(root: Path) -> None:
    online = list(range(32))
    write_online(root, online)
    # First threads 0-15 (socket0 = 0-7, socket1 = 8-15), siblings +16.
    for cpu in online:
        first = cpu % 16
        ccx = first // 2  # 0..7 globally, 4 per socket
        socket = ccx // 4
        node = ccx // 2  # NPS2: two CCXs per node
        siblings = [first, first + 16]
        l3 = sorted(c for c in online if (c % 16) // 2 == ccx)
        write_cpu(
            root,
            cpu,
            node=node,
            core_id=first % 8,
            package=socket,
            caches=standard_caches(cpu, siblings, EPYC_L3_IDS[ccx], l3, "32768K"),
        )
    dist = [
        [10, 12, 32, 32],
        [12, 10, 32, 32],
        [32, 32, 10, 12],
        [32, 32, 12, 10],
    ]
    for n in range(4):
        cpus = sorted(c for c in online if (c % 16) // 4 == n)
        write_node(root, n, cpus=cpus, distance=dist[n], mem_kb=32 << 20)


def offline(root: Path) -> None:
    present = list(range(8))
    online = [c for c in present if c != 3]
    write_online(root, online)
    for cpu in present:
        if cpu == 3:
            # Offline CPUs keep their directory but lose cache/ and topology/.
            (cpu_root(root) / "cpu3").mkdir(parents=True, exist_ok=True)
            _w(cpu_root(root) / "cpu3" / "online", "0")
            continue
        llc = cpu // 4
        l3 = [c for c in online if c // 4 == llc]
        write_cpu(
            root,
            cpu,
            node=llc,
            core_id=cpu,
            package=0,
            caches=standard_caches(cpu, [cpu], llc, l3, "16384K"),
        )
    _w(cpu_root(root) / "offline", "3")
    write_node(root, 0, cpus=[0, 1, 2], distance=[10, 20], mem_kb=8 << 20)
    write_node(root, 1, cpus=[4, 5, 6, 7], distance=None, mem_kb=8 << 20)


def nocache(root: Path) -> None:
    online = [0, 1, 2, 3]
    write_online(root, online)
    for cpu in online:
        write_cpu(root, cpu, node=None, core_id=None, caches=None)


def armnoid(root: Path) -> None:
    online = list(range(8))
    write_online(root, online)
    for cpu in online:
        cluster = [c for c in online if c // 4 == cpu // 4]
        write_cpu(
            root,
            cpu,
            node=0,
            core_id=cpu,
            package=0,
            caches=[
                {"level": 1, "type": "Data", "id": None, "shared": [cpu], "size": "64K"},
                {"level": 1, "type": "Instruction", "id": None, "shared": [cpu], "size": "64K"},
                {"level": 2, "type": "Unified", "id": None, "shared": cluster, "size": "1024K"},
            ],
        )
    write_node(root, 0, cpus=online, distance=[10], mem_kb=4 << 20)


def mixedcache(root: Path) -> None:
    online = [0, 1, 2, 3]
    write_online(root, online)
    for cpu in online:
        caches = standard_caches(cpu, [cpu], 5, [0, 1], "8192K") if cpu < 2 else None
        write_cpu(root, cpu, node=0, core_id=cpu, package=0, caches=caches)
    write_node(root, 0, cpus=online, distance=[10], mem_kb=4 << 20)


def cxl(root: Path) -> None:
    online = list(range(8))
    write_online(root, online)
    for cpu in online:
        llc = cpu // 4
        l3 = [c for c in online if c // 4 == llc]
        write_cpu(
            root,
            cpu,
            node=0,
            core_id=cpu,
            package=0,
            caches=standard_caches(cpu, [cpu], llc, l3, "16384K"),
        )
    write_node(root, 0, cpus=online, distance=[10, 20], mem_kb=16 << 20)
    write_node(root, 1, cpus=[], distance=[20, 10], mem_kb=128 << 20)


def sparse(root: Path) -> None:
    online = [0, 1, 2, 3, 8, 9, 10, 11]
    write_online(root, online)
    for cpu in online:
        node = 0 if cpu < 8 else 2
        l3 = [c for c in online if (c < 8) == (cpu < 8)]
        write_cpu(
            root,
            cpu,
            node=node,
            core_id=cpu % 4,
            package=node // 2,
            caches=standard_caches(cpu, [cpu], 0 if cpu < 8 else 1, l3, "16384K"),
        )
    write_node(root, 0, cpus=[0, 1, 2, 3], distance=[10, 20], mem_kb=8 << 20)
    write_node(root, 2, cpus=[8, 9, 10, 11], distance=[20, 10], mem_kb=8 << 20)


def halfempty(root: Path) -> None:
    write_online(root, [0, 1, 2, 3])


def host2(root: Path) -> None:
    online = [0, 1]
    write_online(root, online)
    for cpu in online:
        write_cpu(
            root,
            cpu,
            node=0,
            core_id=cpu,
            package=0,
            caches=standard_caches(cpu, [cpu], 0, online, "32768K"),
        )
    write_node(root, 0, cpus=online, distance=[10], mem_kb=5597396)


MACHINES: dict[str, Callable[[Path], None]] = {
    "intel2s": intel2s,
    "epyc": epyc,
    "offline": offline,
    "nocache": nocache,
    "armnoid": armnoid,
    "mixedcache": mixedcache,
    "cxl": cxl,
    "sparse": sparse,
    "halfempty": halfempty,
    "host2": host2,
}


def build(root: Path, name: str) -> Path:
    """Write machine ``name`` under ``root/name`` and return that sysfs root."""
    out = root / name
    MACHINES[name](out)
    return out
