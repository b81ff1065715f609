"""Whether a process still runs: one answer for holders, cgroup and tree sweeps, the launcher.

A zombie counts as gone: it holds no flocks and no cgroup membership, and a
killed process stays one until its parent reaps it. A process that exists but
cannot be inspected (another user's) counts as alive, so nothing of it is
swept away.
"""

from __future__ import annotations

import psutil


def pid_alive(pid: int | None, create_time: float | None = None) -> bool:
    """Alive and not a zombie; with ``create_time``, also not a recycled pid."""
    if not pid:
        return False
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        if create_time is not None and abs(p.create_time() - create_time) > 0.05:
            return False
        return True
    except (psutil.NoSuchProcess, ProcessLookupError):
        return False
    except psutil.Error:
        return True


def create_time(pid: int) -> float | None:
    """The process's start time (psutil's), to tell it from a later one with its pid."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None
