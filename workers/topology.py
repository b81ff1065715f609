"""LLC groups of this host, for one worker per group.

:func:`llc_groups` is the only entry point. It uses the host-resources
module ``ktstr_steps.topology.HostTopology`` when that exists (the same model
the build reservation uses), and until then a small sysfs reader of our own
that follows ktstr's rules (highest cache level = LLC; groups ordered by LLC
id, indexed densely; no cache info → one group of all online CPUs) and honours
``KTSTR_SYSFS_ROOT`` the same way.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ktstr_steps.cpulist import parse_cpulist


@dataclass(frozen=True)
class LLCGroup:
    index: int
    cpus: tuple[int, ...]
    node: int


def llc_groups() -> list[LLCGroup]:
    """The host's LLC groups, ordered by index."""
    try:
        from ktstr_steps.topology import HostTopology  # type: ignore[import-not-found]
    except ImportError:
        return read_sysfs_llcs()
    from ktstr_steps.errors import KtstrError

    try:
        topo = HostTopology.from_sysfs()
    except KtstrError as exc:
        raise RuntimeError(f"cannot read this host's LLC topology: {exc}") from None
    return [
        LLCGroup(index=int(llc.index), cpus=tuple(sorted(llc.cpus)), node=int(llc.node or 0))
        for llc in topo.llcs
    ]


def sysfs_cpu_dir(root: str | None = None) -> Path:
    """``devices/system/cpu`` under ``KTSTR_SYSFS_ROOT`` (a copy of /sys, or a root holding sys/)."""
    base = Path(root or os.environ.get("KTSTR_SYSFS_ROOT") or "/sys")
    cand = base / "devices" / "system" / "cpu"
    if not cand.is_dir() and (base / "sys" / "devices" / "system" / "cpu").is_dir():
        cand = base / "sys" / "devices" / "system" / "cpu"
    return cand


def read_sysfs_llcs(root: str | None = None) -> list[LLCGroup]:
    """Stand-in sysfs reader (see the module docstring)."""
    cpu_dir = sysfs_cpu_dir(root)
    try:
        online = parse_cpulist((cpu_dir / "online").read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"cannot read the online CPU list from {cpu_dir}/online: {exc}") from None
    if not online:
        raise RuntimeError(f"{cpu_dir}/online lists no CPUs")
    groups: dict[int, set[int]] = {}
    nodes: dict[int, int] = {}
    have_cache = False
    for cpu in online:
        cdir = cpu_dir / f"cpu{cpu}"
        if not cdir.is_dir():
            continue
        nodes[cpu] = _cpu_node(cdir)
        llc_id = _llc_id(cdir)
        if llc_id is None:
            continue
        have_cache = True
        groups.setdefault(llc_id, set()).add(cpu)
    if not have_cache:
        groups = {0: set(online)}
    out = []
    for index, llc_id in enumerate(sorted(groups)):
        cpus = tuple(sorted(groups[llc_id]))
        node = Counter(nodes.get(c, 0) for c in cpus).most_common(1)[0][0]
        out.append(LLCGroup(index=index, cpus=cpus, node=node))
    return out


def _llc_id(cdir: Path) -> int | None:
    best_level, best = -1, None
    for idx in sorted((cdir / "cache").glob("index*")):
        try:
            level = int((idx / "level").read_text())
        except (OSError, ValueError):
            continue
        if level > best_level:
            best_level, best = level, idx
    if best is None:
        return None
    try:
        return int((best / "id").read_text())
    except (OSError, ValueError):
        pass
    try:
        return min(parse_cpulist((best / "shared_cpu_list").read_text()))
    except (OSError, ValueError):
        return 0


def _cpu_node(cdir: Path) -> int:
    for entry in cdir.glob("node*"):
        if entry.name[4:].isdigit():
            return int(entry.name[4:])
    return 0
