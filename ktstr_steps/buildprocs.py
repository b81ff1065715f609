"""The processes of one build: how to find every one of them, and how to end them all.

A build's processes are make, its jobserver children, the compilers and the
phase command that started them. They are found two ways, because a sandbox
may be inert (no cgroup could be made) and a process may outlive its parent:

* members of the build's cgroup (v1 cpuset or v2): membership is inherited
  by fork, so nothing a joined process starts can leave it;
* processes whose environment carries the holder's marker
  (``KTSTR_CI_HOLDER=<name>:<pid>``), which every process that joins a holder
  sets before it starts anything: children inherit it by exec as well.

Ending them is SIGKILL, repeated until none is left. A TERM would give make
time to fork more compilers into a tree that is about to be unlocked; nothing
a kernel build leaves half-written survives the next build's make anyway.
A pid is killed only after it is confirmed as a member (its own
``/proc/PID/cgroup`` names the sandbox, or its own environment carries the
marker), so a stale or fake ``cgroup.procs`` can never make us kill a
stranger.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

MARKER_ENV = "KTSTR_CI_HOLDER"
KILL_TIMEOUT = 15.0  # a process in uninterruptible sleep (NFS, a wedged disk) may take a while


def marker(name: str, pid: int) -> str:
    """The environment value that tags the processes of holder ``name`` (pid ``pid``)."""
    return f"{name}:{pid}"


@dataclass(frozen=True)
class Killed:
    pid: int
    name: str

    def __str__(self) -> str:
        return f"{self.name}[{self.pid}]"


def _in_cgroup(pid: int, cgdir: Path) -> bool:
    """Whether ``pid``'s own cgroup file names ``cgdir`` (its unique directory name)."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    suffix = "/" + cgdir.name
    return any(line.rsplit(":", 1)[-1].rstrip().endswith(suffix) for line in text.splitlines())


def cgroup_members(cgdir: Path | None) -> set[int]:
    """Live pids listed in ``cgdir/cgroup.procs`` that really are in that cgroup."""
    if cgdir is None:
        return set()
    try:
        listed = [int(x) for x in (cgdir / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return set()
    return {pid for pid in listed if _in_cgroup(pid, cgdir)}


def marked(tag: str | None) -> set[int]:
    """Pids whose environment carries ``KTSTR_CI_HOLDER=<tag>``."""
    if not tag:
        return set()
    want = tag
    out: set[int] = set()
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER_ENV) == want:
                out.add(proc.pid)
        except (psutil.Error, OSError):
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def build_pids(cgdir: Path | None, tag: str | None, *, exclude: Iterable[int] = ()) -> set[int]:
    """Every live process of the build, minus ``exclude`` (the caller itself)."""
    skip = set(exclude)
    return {p for p in cgroup_members(cgdir) | marked(tag) if p not in skip and _alive(p)}


def _name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "?"


def kill_build(
    cgdir: Path | None,
    tag: str | None,
    *,
    exclude: Iterable[int] | None = None,
    timeout: float = KILL_TIMEOUT,
) -> tuple[list[Killed], list[int]]:
    """SIGKILL every process of the build until none is left; ``(killed, survivors)``.

    ``exclude`` defaults to the calling process, which may be a member itself
    (the holder lives in its own sandbox; a phase command joined it).
    Survivors are pids still alive after ``timeout`` (uninterruptible sleep).
    """
    skip = {os.getpid()} if exclude is None else set(exclude)
    killed: dict[int, Killed] = {}
    deadline = time.monotonic() + timeout
    while True:
        pids = build_pids(cgdir, tag, exclude=skip)
        if not pids:
            return list(killed.values()), []
        if time.monotonic() >= deadline:
            return list(killed.values()), sorted(pids)
        for pid in sorted(pids):
            if pid not in killed:
                killed[pid] = Killed(pid, _name(pid))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            except PermissionError:
                skip.add(pid)  # not ours to kill: another user's process that joined by hand
        time.sleep(0.02)


def describe(killed: list[Killed], limit: int = 8) -> str:
    """``make[123], cc1[456], … (+3 more)`` for log lines and error messages."""
    shown = ", ".join(str(k) for k in killed[:limit])
    more = len(killed) - limit
    return shown + (f" (+{more} more)" if more > 0 else "")
