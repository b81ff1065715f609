"""Worker specs: which buildbot-workers this host runs, their names, CPUs and paths.

Configuration derived from the settings and this host's LLC groups, so it
lives with the settings: ``master/builders.py`` registers the workers on the
master, the launcher (``launcher/service.py``) creates and starts them and
``ktstr-ci workers list`` shows them, all from the same list. With
``workers.mode = "auto"`` that is one worker per LLC group of this host
(``<host>-llc<index>``); with ``"list"`` the listed ones.

The LLC groups come from the pipeline's host model
(:class:`ktstr_steps.topology.HostTopology`), the same one the build
reservation plans with, so a worker's CPUs are exactly the LLC group its
builds lock. ``KTSTR_SYSFS_ROOT`` fakes the topology for both.

Faked topologies (``KTSTR_SYSFS_ROOT``) may record CPUs this host does not
have. Such a worker is pinned to real CPUs instead: recorded CPU ``c`` maps to
the ``c mod N``-th CPU this process may run on (so two fake single-CPU groups
land on two different real CPUs of a 2-CPU host), and a warning says so. The
``llc_cpus`` worker property keeps the recorded CPUs, because the build's LLC
planner reads the same (fake) topology.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ktstr_steps.cpulist import format_cpulist
from ktstr_steps.errors import KtstrError
from ktstr_steps.topology import HostTopology
from settings.model import Settings


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


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    host: str
    llc_index: int
    cpus: tuple[int, ...]  # the LLC group's CPUs as the topology records them
    node: int
    basedir: Path
    password_file: Path
    # CPUs the process is pinned to; None = not pinned (a worker on another host).
    pin_cpus: tuple[int, ...] | None
    pin_note: str | None  # why pin_cpus differs from cpus, for the log

    @property
    def local(self) -> bool:
        return self.pin_cpus is not None

    def properties(self, settings: Settings) -> dict[str, object]:
        """Worker properties every build on this worker sees."""
        return {
            "host": self.host,
            "llc_index": self.llc_index,
            "llc_cpus": format_cpulist(self.cpus),
            "llc_ncpus": len(self.cpus),
            "llc_node": self.node,
            "tree_store": str(settings.paths.tree_store),
            "tree_max_trees": settings.paths.max_trees,
            "tree_max_gb": settings.paths.max_gb,
            "kernel_cache": str(settings.paths.kernel_cache),
        }


def map_cpus(cpus: tuple[int, ...],
             allowed: set[int] | None = None) -> tuple[tuple[int, ...], str | None]:
    """CPUs to pin to for a group recorded as ``cpus``; the note explains a remapping."""
    real = sorted(allowed if allowed is not None else os.sched_getaffinity(0))
    if set(cpus) <= set(real):
        return tuple(cpus), None
    mapped = tuple(sorted({real[c % len(real)] for c in cpus}))
    note = (
        f"recorded LLC CPUs {format_cpulist(cpus)} are not all usable on this host "
        f"(usable: {format_cpulist(real)}; a faked KTSTR_SYSFS_ROOT?); pinned to "
        f"{format_cpulist(mapped)} instead (CPU c -> usable[c mod {len(real)}])"
    )
    return mapped, note


def worker_specs(settings: Settings) -> list[WorkerSpec]:
    """The workers of these settings (see the module docstring)."""
    specs: list[WorkerSpec] = []
    if settings.workers.mode == "list":
        local_host = settings.master.host
        for lw in settings.workers.listed:
            pin, note = (map_cpus(lw.cpus) if lw.host == local_host else (None, None))
            specs.append(
                WorkerSpec(
                    name=lw.name, host=lw.host, llc_index=lw.llc_index, cpus=lw.cpus, node=0,
                    basedir=settings.paths.workers / lw.name,
                    password_file=settings.worker_password_file(lw.name),
                    pin_cpus=pin, pin_note=note,
                )
            )
        return specs
    host = settings.master.host
    for group in llc_groups():
        name = f"{host}-llc{group.index}"
        pin, note = map_cpus(group.cpus)
        specs.append(
            WorkerSpec(
                name=name, host=host, llc_index=group.index, cpus=group.cpus, node=group.node,
                basedir=settings.paths.workers / name,
                password_file=settings.worker_password_file(name),
                pin_cpus=pin, pin_note=note,
            )
        )
    return specs
