"""The worker-side holder: one process that owns a build's reservation across many commands.

:mod:`~ktstr_steps.holder.state` (names, state files, the stale sweep), :mod:`~ktstr_steps.holder.client` (what the ``ktstr-ci holder`` and
phase commands do), :mod:`~ktstr_steps.holder.server` (the holder process),
:mod:`~ktstr_steps.holder.link` (the worker's connection to the master).
"""

from ktstr_steps.holder.client import (
    ReservationGuard,
    acquire,
    check_alive,
    join_and_guard,
    join_holder,
    list_holders,
    lock_source,
    release,
    run,
    status,
)
from ktstr_steps.holder.state import (
    check_name,
    holders_dir,
    log_path,
    read_state,
    run_dir,
    state_path,
    sweep_stale,
)
from ktstr_steps.liveness import pid_alive

__all__ = [
    "ReservationGuard",
    "acquire",
    "check_alive",
    "check_name",
    "holders_dir",
    "join_and_guard",
    "join_holder",
    "list_holders",
    "lock_source",
    "log_path",
    "pid_alive",
    "read_state",
    "release",
    "run",
    "run_dir",
    "state_path",
    "status",
    "sweep_stale",
]
