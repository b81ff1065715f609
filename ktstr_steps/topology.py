"""Host topology from sysfs, as ktstr reads it.

The model is what the LLC planner needs: online CPUs, LLC groups (the
highest cache level of each CPU) with a dense index used in the lock file
names ``/tmp/ktstr-llc-{index}.lock``, NUMA nodes (including memory-only
ones) and the node distance matrix.

The sysfs root is overridable with ``KTSTR_SYSFS_ROOT`` (a directory standing
for ``/sys``) so recorded trees of other machines can be read. The LLC index
must agree with ktstr's on the same machine — a CI build and a ktstr perf run
on the same host lock the same files — so the grouping and fallbacks follow
ktstr exactly, including the odd ones (a CPU with no cache information falls
back to LLC identity 0).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ktstr_steps.cpulist import format_cpulist, parse_cpulist
from ktstr_steps.errors import KtstrError
from ktstr_steps.messages import warn

UNREACHABLE = 255  # ktstr's distance for a node it knows nothing about
_NODE_RE = re.compile(r"^node(\d+)$")
_INDEX_RE = re.compile(r"^index(\d+)$")


@dataclass(frozen=True)
class Llc:
    """One last-level-cache group. ``index`` is the dense rank used in lock names."""

    index: int
    level: int  # 0 for the synthetic LLC of a machine without cache information
    cache_id: int
    cpus: tuple[int, ...]
    node: int  # majority node of its CPUs
    size: str | None = None  # sysfs text such as "32768K"; informational only

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "level": self.level,
            "cpus": list(self.cpus),
            "node": self.node,
            "cache_id": self.cache_id,
            "size": self.size,
        }


@dataclass(frozen=True)
class Node:
    id: int
    cpus: tuple[int, ...]  # online CPUs on this node
    distance: tuple[int, ...]  # row aligned with HostTopology.node_ids
    memory_kb: int | None
    memory_only: bool

    def to_json(self, node_ids: list[int]) -> dict:
        return {
            "id": self.id,
            "cpus": list(self.cpus),
            "distance": list(self.distance),
            "distance_to": {str(n): d for n, d in zip(node_ids, self.distance, strict=True)},
            "memory_kb": self.memory_kb,
            "memory_only": self.memory_only,
        }


@dataclass
class HostTopology:
    root: Path
    online_cpus: list[int]
    llcs: list[Llc]
    nodes: list[Node]
    node_of_cpu: dict[int, int]
    core_of_cpu: dict[int, tuple[int, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    # -- reading -----------------------------------------------------------

    @classmethod
    def from_sysfs(cls, root: Path | None = None, *, quiet: bool = False) -> HostTopology:
        """Read the topology under ``root`` (default ``$KTSTR_SYSFS_ROOT`` or ``/sys``).

        Only an unreadable/empty ``online`` list (or an online list none of whose
        CPUs has a directory) is fatal, as KtstrError kind ``sysfs-unreadable`` —
        the reservation's "sysfs unreadable" branch. A
        ``KTSTR_SYSFS_ROOT`` that is not a directory is a configuration mistake
        and fails with kind ``sysfs-root-invalid`` naming the variable.
        Non-fatal oddities become warnings (printed unless ``quiet``).
        """
        if root is None:
            env = os.environ.get("KTSTR_SYSFS_ROOT")
            if env:
                root = Path(env)
                if not root.is_dir():
                    raise KtstrError(
                        f"KTSTR_SYSFS_ROOT={env} is not a directory; point it at a "
                        "directory standing for /sys (with devices/system/cpu/online), "
                        "or unset it to read the real /sys.",
                        kind="sysfs-root-invalid",
                    )
            else:
                root = Path("/sys")
        topo = _Reader(Path(root)).read()
        if not quiet:
            for w in topo.warnings:
                warn(w)
        return topo

    # -- queries -----------------------------------------------------------

    @property
    def node_ids(self) -> list[int]:
        return [n.id for n in self.nodes]

    def node(self, node_id: int) -> Node | None:
        for n in self.nodes:
            if n.id == node_id:
                return n
        return None

    def distance(self, a: int, b: int) -> int:
        """NUMA distance; 255 ("unreachable") for a node not in the matrix."""
        ids = self.node_ids
        if a not in ids or b not in ids:
            return UNREACHABLE
        return self.nodes[ids.index(a)].distance[ids.index(b)]

    def llcs_of_node(self) -> dict[int, list[int]]:
        """``node -> [LLC indices]`` sorted by node then index (ktstr keeps it so)."""
        out: dict[int, list[int]] = {}
        for llc in self.llcs:
            out.setdefault(llc.node, []).append(llc.index)
        return {n: sorted(ix) for n, ix in sorted(out.items())}

    def smt_siblings(self) -> list[list[int]]:
        groups: dict[tuple[int, int], list[int]] = {}
        for cpu in self.online_cpus:
            groups.setdefault(self.core_of_cpu.get(cpu, (0, cpu)), []).append(cpu)
        return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])

    def to_json(self) -> dict:
        siblings = self.smt_siblings()
        tpc = max((len(g) for g in siblings), default=1)
        return {
            "sysfs_root": str(self.root),
            "online_cpus": list(self.online_cpus),
            "llcs": [llc.to_json() for llc in self.llcs],
            "nodes": [n.to_json(self.node_ids) for n in self.nodes],
            "smt": {
                "enabled": tpc > 1,
                "threads_per_core": tpc,
                "cores": len(siblings),
                "siblings": [g for g in siblings if len(g) > 1],
            },
            "warnings": list(self.warnings),
        }

    def describe(self) -> str:
        """A readable table for ``ktstr-ci topology``."""
        lines = [
            f"sysfs: {self.root}",
            f"online CPUs: {format_cpulist(self.online_cpus)} ({len(self.online_cpus)})",
            "",
            f"{'LLC':>3}  {'level':<5}  {'cache_id':>8}  {'node':>4}  {'size':>8}  cpus",
        ]
        for llc in self.llcs:
            level = f"L{llc.level}" if llc.level else "-"
            lines.append(
                f"{llc.index:>3}  {level:<5}  {llc.cache_id:>8}  {llc.node:>4}  "
                f"{llc.size or '-':>8}  {format_cpulist(llc.cpus)} ({len(llc.cpus)})"
            )
        lines += ["", f"{'node':>4}  {'memory':>10}  {'cpus':<16}  distances"]
        for n in self.nodes:
            mem = f"{n.memory_kb / 1048576:.1f} GiB" if n.memory_kb is not None else "-"
            cpus = format_cpulist(n.cpus) or "(memory only)"
            lines.append(f"{n.id:>4}  {mem:>10}  {cpus:<16}  {' '.join(map(str, n.distance))}")
        siblings = self.smt_siblings()
        tpc = max((len(g) for g in siblings), default=1)
        lines += ["", f"SMT: {tpc} thread(s) per core, {len(siblings)} core(s)"]
        return "\n".join(lines)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


class _Reader:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cpu_dir = root / "devices" / "system" / "cpu"
        self.node_dir = root / "devices" / "system" / "node"
        self.warnings: list[str] = []

    def read(self) -> HostTopology:
        online = self._online()
        cpus: list[int] = []
        llc_of: dict[int, tuple[int, int, str | None] | None] = {}
        node_of: dict[int, int] = {}
        core_of: dict[int, tuple[int, int]] = {}
        for cpu in online:
            d = self.cpu_dir / f"cpu{cpu}"
            if not d.is_dir():
                self.warnings.append(f"{d} missing for online CPU {cpu}; skipping it")
                continue
            cpus.append(cpu)
            llc_of[cpu] = self._llc_of(d)
            node_of[cpu] = self._node_of(d)
            core = _read_int(d / "topology" / "core_id")
            # core_id is only unique within a package, so siblings are grouped
            # by (package, core); without a package id the node stands in.
            pkg = _read_int(d / "topology" / "physical_package_id")
            core_of[cpu] = (
                pkg if pkg is not None else node_of[cpu],
                core if core is not None else cpu,
            )
        if not cpus:
            raise KtstrError(
                f"sysfs unreadable: {self.cpu_dir / 'online'} lists CPUs "
                f"{format_cpulist(online)} but none of them has a directory under "
                f"{self.cpu_dir}; the tree is incomplete",
                kind="sysfs-unreadable",
            )
        llcs = self._group_llcs(cpus, llc_of, node_of)
        nodes = self._nodes(cpus, node_of)
        return HostTopology(
            root=self.root,
            online_cpus=cpus,
            llcs=llcs,
            nodes=nodes,
            node_of_cpu=node_of,
            core_of_cpu=core_of,
            warnings=self.warnings,
        )

    def _online(self) -> list[int]:
        path = self.cpu_dir / "online"
        text = _read(path)
        if text is None:
            raise KtstrError(f"sysfs unreadable: cannot read {path}", kind="sysfs-unreadable")
        try:
            online = parse_cpulist(text)
        except ValueError as exc:
            raise KtstrError(
                f"sysfs unreadable: {path} is not a CPU list ({text.strip()!r}: {exc})",
                kind="sysfs-unreadable",
            ) from exc
        if not online:
            raise KtstrError(f"sysfs unreadable: {path} is empty", kind="sysfs-unreadable")
        return online

    def _llc_of(self, cpu_dir: Path) -> tuple[int, int, str | None] | None:
        """(level, identity, size) of the CPU's highest-level cache, None without cache info."""
        cache = cpu_dir / "cache"
        best: tuple[int, Path] | None = None
        try:
            entries = sorted(os.listdir(cache))
        except OSError:
            return None
        for name in entries:
            if not _INDEX_RE.match(name):
                continue
            level = _read_int(cache / name / "level")
            if level is None:
                continue
            # Highest level wins; on equal levels (L1d/L1i) the first index is fine.
            if best is None or level > best[0]:
                best = (level, cache / name)
        if best is None:
            return None
        level, idx = best
        cache_id = _read_int(idx / "id")
        if cache_id is None:
            # Kernels before cache ids (and some arm64 firmware) lack the id file:
            # the lowest CPU sharing the cache identifies it, else 0 (ktstr's chain).
            shared = _read(idx / "shared_cpu_list")
            try:
                members = parse_cpulist(shared) if shared is not None else []
            except ValueError:
                members = []
            cache_id = members[0] if members else 0
        size = _read(idx / "size")
        return level, cache_id, size.strip() if size else None

    def _node_of(self, cpu_dir: Path) -> int:
        try:
            for name in sorted(os.listdir(cpu_dir)):
                m = _NODE_RE.match(name)
                if m:
                    return int(m.group(1))
        except OSError:
            pass
        return 0

    def _group_llcs(
        self,
        cpus: list[int],
        llc_of: dict[int, tuple[int, int, str | None] | None],
        node_of: dict[int, int],
    ) -> list[Llc]:
        if all(v is None for v in llc_of.values()):
            # No cache information anywhere: one synthetic LLC holds every CPU.
            majority = _majority([node_of[c] for c in cpus])
            return [Llc(0, 0, 0, tuple(sorted(cpus)), majority, None)]
        groups: dict[int, list[int]] = {}
        level_of: dict[int, int] = {}
        size_of: dict[int, str | None] = {}
        for cpu in cpus:
            info = llc_of[cpu]
            # ktstr's fallback for a CPU without cache info is identity 0, so it
            # joins LLC group 0 rather than getting a lock of its own.
            level, ident, size = info if info is not None else (0, 0, None)
            groups.setdefault(ident, []).append(cpu)
            if level >= level_of.get(ident, -1):
                level_of[ident] = level
                size_of[ident] = size if size is not None else size_of.get(ident)
        out = []
        for index, ident in enumerate(sorted(groups)):
            members = tuple(sorted(groups[ident]))
            out.append(
                Llc(
                    index,
                    level_of[ident],
                    ident,
                    members,
                    _majority([node_of[c] for c in members]),
                    size_of[ident],
                )
            )
        return out

    def _nodes(self, cpus: list[int], node_of: dict[int, int]) -> list[Node]:
        ids: set[int] = set(node_of.values())
        try:
            for name in os.listdir(self.node_dir):
                m = _NODE_RE.match(name)
                if m and (self.node_dir / name).is_dir():
                    ids.add(int(m.group(1)))
        except OSError:
            pass  # a kernel without NUMA: the CPU nodes (all 0) are the node set
        node_ids = sorted(ids)
        rows: dict[int, list[int]] = {}
        fallback = False
        for n in node_ids:
            text = _read(self.node_dir / f"node{n}" / "distance")
            try:
                row = [int(x) for x in text.split()] if text is not None else []
            except ValueError:
                row = []
            if len(row) < len(node_ids):
                fallback = True
                break
            rows[n] = row[: len(node_ids)]
        if fallback and len(node_ids) > 1:
            self.warnings.append(
                f"NUMA distance matrix under {self.node_dir} is missing or short; "
                "assuming 10 within a node and 20 between nodes"
            )
        if fallback:
            rows = {a: [10 if a == b else 20 for b in node_ids] for a in node_ids}
        nodes = []
        for n in node_ids:
            node_cpus = tuple(c for c in cpus if node_of[c] == n)
            mem = _meminfo_total(_read(self.node_dir / f"node{n}" / "meminfo"))
            cpulist = _read(self.node_dir / f"node{n}" / "cpulist")
            try:
                listed = parse_cpulist(cpulist) if cpulist is not None else list(node_cpus)
            except ValueError:
                listed = list(node_cpus)
            memory_only = not node_cpus and not listed and bool(mem)
            nodes.append(Node(n, node_cpus, tuple(rows[n]), mem, memory_only))
        return nodes


def _meminfo_total(text: str | None) -> int | None:
    if text is None:
        return None
    for line in text.splitlines():
        parts = line.split()
        # "Node 1 MemTotal:  16777216 kB"
        if len(parts) >= 4 and parts[2] == "MemTotal:":
            try:
                return int(parts[3])
            except ValueError:
                return None
    return None


def _majority(nodes: list[int]) -> int:
    """Most common node; ties go to the lowest node id (deterministic)."""
    if not nodes:
        return 0
    counts = Counter(nodes)
    best = max(counts.values())
    return min(n for n, c in counts.items() if c == best)
