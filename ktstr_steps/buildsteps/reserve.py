"""Reserve: the build's LLC plan and cgroup sandbox, held by a worker-side holder process."""

from __future__ import annotations

from typing import Any

from buildbot import config
from buildbot.interfaces import IRenderable
from buildbot.process.results import SUCCESS

from ktstr_steps.buildsteps.base import KtstrCiStep, check_renderable_or, holder_name
from ktstr_steps.cpulist import format_cpulist


def check_wait(value: Any, cls: type) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        config.error(f"{cls.__name__} argument lock_wait must be an int >= 0, not {value!r}")


class Reserve(KtstrCiStep):
    """``ktstr-ci holder acquire``: LLC flocks + sandbox for this build, released by Release."""

    name = "reserve"
    description = ["reserving"]
    subcommand = ("holder", "acquire")
    phase = "reserve"
    renderables = ["holder", "cpu_cap"]
    # TERM first so an interrupted wait lets the holder drop what it already took.
    sigtermTime = 10

    def __init__(
        self,
        *,
        holder: str | IRenderable = holder_name,
        cpu_cap: int | IRenderable | None = None,
        lock_wait: int = 3600,
        **kwargs: Any,
    ) -> None:
        check_renderable_or(holder, str, type(self), "holder")
        if cpu_cap is not None:
            check_renderable_or(cpu_cap, int, type(self), "cpu_cap")
            if isinstance(cpu_cap, int) and (isinstance(cpu_cap, bool) or cpu_cap < 1):
                config.error(f"Reserve argument cpu_cap must be >= 1, not {cpu_cap!r}")
        check_wait(lock_wait, type(self))
        self.holder = holder
        self.cpu_cap = cpu_cap
        self.lock_wait = lock_wait
        # Waiting prints little; the no-output timeout must outlast the wait itself.
        kwargs.setdefault("timeout", lock_wait + 600)
        super().__init__(**kwargs)

    def check_rendered(self) -> str | None:
        # cpu_cap usually comes from the worker property llc_ncpus, which may be a string.
        if self.cpu_cap in (None, ""):
            self.cpu_cap = None
            return None
        try:
            cap = int(self.cpu_cap)
        except (TypeError, ValueError):
            return f"invalid cpu_cap {self.cpu_cap!r}: not an integer"
        if cap < 1:
            return f"invalid cpu_cap {cap}: must be >= 1"
        self.cpu_cap = cap
        return None

    def master_link(self) -> str | None:
        """The worker-side ``host:port`` of this build's connection, when it is TCP.

        The holder releases the reservation as soon as that connection closes:
        Buildbot never continues a build over a new connection, so its release
        step would never run.
        """
        get_peer = getattr(self.remote, "get_peer", None)
        try:
            peer = get_peer() if get_peer is not None else None
        except Exception:  # a protocol without a peer (the in-process LocalWorker)
            return None
        if not isinstance(peer, str) or not peer.rpartition(":")[2].isdigit():
            return None
        return peer

    def arguments(self) -> list[str]:
        argv = ["--name", self.holder]
        if self.cpu_cap is not None:
            argv += ["--cpu-cap", str(self.cpu_cap)]
        link = self.master_link()
        if link is not None:
            argv += ["--master-link", link]
        return argv + ["--wait", str(self.lock_wait)]

    def interpret(self, data: dict[str, Any]) -> int:
        self.set_prop("holder_name", data.get("name"))
        sandbox = data.get("sandbox") or {}
        self.set_prop("sandbox_kind", sandbox.get("kind"))
        plan = data.get("plan")
        if data.get("bypass"):
            self.descriptionDone = "bypass: no reservation"
            return SUCCESS
        if not plan:
            self.descriptionDone = "no reservation (no LLC plan for this host)"
            return SUCCESS
        llcs = [int(i) for i in plan.get("llcs") or []]
        cpus = [int(c) for c in plan.get("cpus") or []]
        jobs = plan.get("make_jobs")
        self.set_prop("llcs", llcs)
        self.set_prop("llc_cpus", cpus)
        self.set_prop("llc_cpuset", format_cpulist(cpus))
        self.set_prop("make_jobs", jobs)
        which = "LLC" if len(llcs) == 1 else "LLCs"
        details = [f"cpus {format_cpulist(cpus)}", f"-j{jobs}"]
        if plan.get("cross_node"):
            details.append("cross-node")
        self.descriptionDone = (
            f"reserved {which} {','.join(map(str, llcs))} ({', '.join(details)})"
        )
        return SUCCESS


__all__ = ["Reserve", "check_wait"]
