"""This host's LLC groups: one buildbot-worker runs per group.

The groups come from the pipeline's host model
(:class:`ktstr_steps.topology.HostTopology`), the same one the build
reservation plans with, so a worker's CPUs are exactly the LLC group its
builds lock. ``KTSTR_SYSFS_ROOT`` fakes the topology for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ktstr_steps.errors import KtstrError
from ktstr_steps.topology import HostTopology


@dataclass(frozen=True)
class LLCGroup:
    index: int
    cpus: tuple[int, ...]
    node: int


def llc_groups(root: Path | None = None) -> list[LLCGroup]:
    """The LLC groups under ``root`` (default ``$KTSTR_SYSFS_ROOT`` or ``/sys``), by index."""
    try:
        topo = HostTopology.from_sysfs(root)
    except KtstrError as exc:
        raise RuntimeError(f"cannot read this host's LLC topology: {exc}") from None
    return [
        LLCGroup(index=int(llc.index), cpus=tuple(sorted(llc.cpus)), node=int(llc.node or 0))
        for llc in topo.llcs
    ]
