"""The processes the launcher starts and stops: pid files, liveness, stopping.

The master (``twistd.pid`` in its directory) and workers found without their
supervisord are stopped the way ``buildbot stop`` does it: SIGTERM, wait,
SIGKILL as a last resort, only for a pid file naming a live process.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from ktstr_steps import liveness


@dataclass
class ProcState:
    name: str
    pidfile: Path
    pid: int | None
    running: bool
    affinity: list[int] | None = None
    # A worker's state in supervisord (RUNNING, BACKOFF, FATAL, ...); None when unsupervised.
    state: str | None = None
    supervised: bool = False
    restarts: int | None = None


def pid_alive(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` when that process is alive (and not a zombie)."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def alive(pid: int) -> bool:
    """True when ``pid`` runs (a zombie does not: it only waits to be reaped)."""
    return liveness.pid_alive(pid)


def stop_pid(pid: int, timeout: float) -> bool:
    """SIGTERM ``pid``, wait up to ``timeout`` seconds, then SIGKILL; False when it was gone."""
    # Wait for the process itself: twistd removes its pid file before it exits.
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    time.sleep(0.2)
    return True


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} does not exist)"
