"""``acquire_build_reservation``: the LLC plan + cgroup sandbox + make -j hint.

The three outcomes, as in ktstr:

- ``KTSTR_BYPASS_LLC_LOCKS`` set (any non-empty value): nothing is reserved
  and sysfs is never read; a cap alongside it is a contradiction and fails
  with ktstr's "resource contract" error.
- sysfs topology readable: the LLC plan is acquired (its flocks), the
  cross-node warning printed, the sandbox created for ``pid`` (degrade is
  fatal only when a cap was given), and ``make_jobs`` = the plan's CPU count.
- sysfs unreadable: an error with a cap (the budget cannot be enforced), a
  warning and no reservation without one.

Release order: the sandbox is torn down BEFORE the LLC flocks
are dropped, so no peer can plan onto those LLCs while the old cgroup may
still pin stragglers there. The dataclass declares ``sandbox`` first, like
ktstr's reservation struct, whose fields are dropped in declaration order.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ktstr_steps.cgroups import CgroupEnv
from ktstr_steps.errors import KtstrError
from ktstr_steps.messages import LABEL, warn
from ktstr_steps.planner import bypass_llc_locks
from ktstr_steps.sandbox import BuildSandbox

BYPASS_CONFLICT = (
    f"{LABEL}: --cpu-cap conflicts with KTSTR_BYPASS_LLC_LOCKS=1; unset one of them. "
    "--cpu-cap is a resource contract; bypass disables the contract entirely."
)


@dataclass
class BuildReservation:
    """What one build holds. Field order is the release order (sandbox before plan)."""

    sandbox: BuildSandbox | None = None
    plan: Any = None  # planner.LlcPlan
    make_jobs: int | None = None
    bypass: bool = False

    def release(self, tag: str | None = None) -> None:
        """Tear down the sandbox (its processes killed), then drop the LLC flocks.

        Idempotent; both always run. ``tag`` marks the build's processes when
        a holder owns the reservation (see :mod:`ktstr_steps.buildprocs`).
        """
        sandbox, self.sandbox = self.sandbox, None
        plan, self.plan = self.plan, None
        try:
            if sandbox is not None:
                sandbox.teardown(tag)
        finally:
            if plan is not None:
                plan.release()

    def __enter__(self) -> BuildReservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def to_json(self) -> dict:
        return {
            "bypass": self.bypass,
            "plan": plan_json(self.plan, self.make_jobs) if self.plan is not None else None,
            "sandbox": self.sandbox.to_json() if self.sandbox is not None else {"kind": "none", "path": None},
            "make_jobs": self.make_jobs,
        }


def plan_json(plan: Any, make_jobs: int | None = None) -> dict:
    """The contract's plan object (docs/contracts.md): llcs, cpus, mems, make_jobs, cross_node."""
    cpus = list(plan.cpus)
    return {
        "llcs": list(plan.llcs),
        "cpus": cpus,
        "mems": list(plan.mems),
        "make_jobs": make_jobs if make_jobs is not None else max(1, len(cpus)),
        "cross_node": bool(getattr(plan, "cross_node", len(list(plan.mems)) > 1)),
    }


def acquire_build_reservation(
    cap: int | None,
    *,
    wait: float = 0.0,
    topo: Any = None,
    allowed: set[int] | None = None,
    lock_dir: Path = Path("/tmp"),
    pid: int | None = None,
    sandbox_env: CgroupEnv | None = None,
) -> BuildReservation:
    """Reserve LLCs and make the sandbox for ``pid`` (default: this process).

    ``topo``/``allowed``/``lock_dir``/``sandbox_env`` are seams for recorded
    machines and tests; production passes none of them. On any error nothing
    stays held: a sandbox failure releases the plan's flocks before raising.
    """
    if bypass_llc_locks():
        if cap is not None:
            raise KtstrError(BYPASS_CONFLICT, kind="bypass-conflict")
        return BuildReservation(bypass=True)

    from ktstr_steps import planner
    from ktstr_steps.topology import HostTopology

    if topo is None:
        try:
            topo = HostTopology.from_sysfs()
        except KtstrError as exc:
            if exc.kind != "sysfs-unreadable":
                raise  # e.g. KTSTR_SYSFS_ROOT pointing at nothing: a setup mistake
            if cap is not None:
                raise KtstrError(
                    f"{LABEL}: --cpu-cap set but host LLC topology unreadable from sysfs — "
                    "cannot enforce the resource budget. Run on a host with "
                    "/sys/devices/system/cpu populated, or drop --cpu-cap to build "
                    f"without enforcement. ({exc})",
                    kind="sysfs-unreadable",
                ) from exc
            warn(
                "could not read host LLC topology from sysfs; skipping kernel-build LLC "
                "reservation. Concurrent perf-mode runs on this host will NOT be "
                f"serialized against this build ({exc})"
            )
            return BuildReservation()

    plan = planner.acquire_llc_plan(topo, cap, allowed=allowed, wait=wait, lock_dir=lock_dir)
    try:
        msg = planner.cross_node_warning(plan, topo)
        if msg:
            print(msg, file=sys.stderr, flush=True)
        sandbox = BuildSandbox.create(
            plan.cpus,
            plan.mems,
            hard=cap is not None,
            pid=os.getpid() if pid is None else pid,
            env=sandbox_env,
        )
    except BaseException:
        plan.release()  # nothing left held on error, signals included
        raise
    return BuildReservation(sandbox=sandbox, plan=plan, make_jobs=max(1, len(list(plan.cpus))))
