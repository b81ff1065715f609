"""The build sandbox: a cgroup that confines a build to the plan's CPUs and NUMA nodes.

cgroup v2 follows ktstr step by step: statfs magic on the
cgroup root, the ``0::`` path, ``cpuset`` in ``cgroup.controllers``,
``+cpuset`` into ``cgroup.subtree_control``, ``mkdir ktstr-build-{ns}-{pid}``,
then ``cpuset.cpus`` → ``cpuset.mems`` → ``cgroup.procs`` with read-back of the
``.effective`` files.

cgroup v1 cpuset is our addition (ktstr has no v1 support): hybrid hosts, like
Debian with ``systemd.unified_cgroup_hierarchy=0`` or this CI machine, have the
cpuset controller bound to a v1 hierarchy and NONE in the unified mount, so a
v2-only port could never confine a build there. Selection: v2 when its cpuset
is usable, else v1 cpuset, else degrade (silent without a cap, an error with
remedies with one — ktstr's rule).

The cgroup filesystem underneath (discovery, bounded writes, removal, sweeps)
is :mod:`ktstr_steps.cgroups`.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable
from pathlib import Path

from ktstr_steps.cgroups import (
    ORPHAN_MAX_AGE,
    SANDBOX_PREFIX,
    CgroupEnv,
    DegradeKind,
    errno_of,
    is_perm,
    read_cpulist_file,
    remove_cgroup_dir,
    sweep_dir,
)
from ktstr_steps.cpulist import format_cpulist
from ktstr_steps.errors import KtstrError
from ktstr_steps.messages import warn


def remedies_error(reasons: list[DegradeKind]) -> KtstrError:
    """ktstr's hard-mode degrade error, with v1 cpuset added to the remedies."""
    desc = "; ".join(r.value for r in reasons)
    return KtstrError(
        f"--cpu-cap: {desc}. This host cannot enforce the resource budget.\n"
        "\n"
        "Remediation (pick one):\n"
        "\n"
        "  1. Re-run under a systemd transient scope with a writable cpuset-capable\n"
        "     cgroup v2 (cpuset delegation):\n"
        "\n"
        "       systemd-run --user --scope -p 'Delegate=cpuset cpu' \\\n"
        "           ktstr-ci kernel build --source <path> --cpu-cap N\n"
        "\n"
        "  2. Re-run as root preserving env so KTSTR_CPU_CAP / KTSTR_CACHE_DIR propagate:\n"
        "\n"
        "       sudo -E ktstr-ci kernel build --source <path> --cpu-cap N\n"
        "\n"
        "  3. Enable cpuset: on cgroup v2 add `cpuset` to the parent cgroup's\n"
        "     cgroup.subtree_control (requires CAP_SYS_ADMIN); on a cgroup v1 or hybrid\n"
        "     host mount the v1 cpuset hierarchy (mount -t cgroup -o cpuset cpuset\n"
        "     /sys/fs/cgroup/cpuset) and run as root so ktstr-ci can create a child there.\n"
        "\n"
        "  4. Drop --cpu-cap to build without the cgroup-level resource contract\n"
        "     (falls back to LLC flock coordination only).",
        kind="sandbox-degraded",
    )


class BuildSandbox:
    """A live (kind ``v2``/``v1``) or inert (kind ``none``) build cgroup."""

    def __init__(
        self,
        kind: str,
        path: Path | None,
        *,
        env: CgroupEnv | None = None,
        drain_to: Path | None = None,
        degraded: list[DegradeKind] | None = None,
        cpus: list[int] | None = None,
        mems: list[int] | None = None,
    ) -> None:
        self.kind = kind
        self.path = path
        self.env = env or CgroupEnv()
        self.drain_to = drain_to
        self.degraded = degraded or []
        self.cpus = list(cpus or [])
        self.mems = list(mems or [])
        self._torn_down = path is None

    # ------------------------------------------------------------------ create

    @classmethod
    def create(
        cls,
        cpus: Iterable[int],
        mems: Iterable[int],
        *,
        hard: bool,
        pid: int | None = None,
        env: CgroupEnv | None = None,
    ) -> BuildSandbox:
        """Make the sandbox and move ``pid`` (default: this process) into it.

        ``hard`` is "a cap was given": degrade becomes an error with remedies.
        Errors that are not a "this host can't" condition are fatal either way
        (ktstr's rule), and the child cgroup is removed before raising.
        """
        env = env or CgroupEnv()
        cpus, mems = sorted(set(cpus)), sorted(set(mems))
        if not cpus or not mems:
            raise KtstrError(
                f"build sandbox needs at least one CPU and one NUMA node (got cpus={cpus}, mems={mems})",
                kind="sandbox-error",
            )
        pid = os.getpid() if pid is None else pid
        reasons: list[DegradeKind] = []
        if env.use_v2:
            got = cls._try_v2(env, cpus, mems, hard=hard, pid=pid)
            if isinstance(got, BuildSandbox):
                return got
            reasons.append(got)
        if env.use_v1:
            got = cls._try_v1(env, cpus, mems, hard=hard, pid=pid)
            if isinstance(got, BuildSandbox):
                return got
            reasons.append(got)
        if hard:
            raise remedies_error(reasons)
        # Without a cap ktstr degrades silently: the LLC flocks still
        # coordinate with perf-mode peers, only kernel enforcement is missing.
        return cls("none", None, env=env, degraded=reasons, cpus=cpus, mems=mems)

    @classmethod
    def _try_v2(
        cls, env: CgroupEnv, cpus: list[int], mems: list[int], *, hard: bool, pid: int
    ) -> BuildSandbox | DegradeKind:
        parent = env.v2_parent_or_degrade()
        if isinstance(parent, DegradeKind):
            return parent
        try:
            controllers = (parent / "cgroup.controllers").read_text().split()
        except OSError:
            controllers = []
        if "cpuset" not in controllers:
            return DegradeKind.NO_CPUSET_CONTROLLER
        subtree = parent / "cgroup.subtree_control"
        if subtree.exists():
            try:
                env.writer(subtree, "+cpuset")
            except OSError as exc:
                if is_perm(exc):
                    return DegradeKind.PERMISSION_DENIED
                if errno_of(exc) == errno.EBUSY:
                    return DegradeKind.SUBTREE_CONTROL_REFUSED
                raise KtstrError(
                    f"write +cpuset to {subtree}: {exc}", kind="sandbox-error"
                ) from exc
        return cls._populate(
            env, parent, cpus, mems, hard=hard, pid=pid, kind="v2",
            eff_cpus="cpuset.cpus.effective", eff_mems="cpuset.mems.effective",
            drain_to=env.v2_drain_target(),
        )

    @classmethod
    def _try_v1(
        cls, env: CgroupEnv, cpus: list[int], mems: list[int], *, hard: bool, pid: int
    ) -> BuildSandbox | DegradeKind:
        parent = env.v1_parent_or_degrade()
        if isinstance(parent, DegradeKind):
            return parent
        if not (parent / "cpuset.cpus").exists():
            return DegradeKind.NO_CPUSET_V1
        # v1 drains to the PARENT, not the hierarchy root: v1 has no
        # no-internal-process rule, so the original cgroup can take its tasks
        # back, and parking them in the root would silently escape whatever
        # cpuset an operator or container placed this worker in.
        return cls._populate(
            env, parent, cpus, mems, hard=hard, pid=pid, kind="v1",
            eff_cpus="cpuset.effective_cpus", eff_mems="cpuset.effective_mems",
            drain_to=parent / "cgroup.procs",
        )

    @classmethod
    def _populate(
        cls,
        env: CgroupEnv,
        parent: Path,
        cpus: list[int],
        mems: list[int],
        *,
        hard: bool,
        pid: int,
        kind: str,
        eff_cpus: str,
        eff_mems: str,
        drain_to: Path,
    ) -> BuildSandbox | DegradeKind:
        # (D) orphans first, so a crashed run's dir is not left beside ours.
        sweep_dir(parent, drain_to, writer=env.writer, rmdir=env.rmdir)
        child = parent / f"{SANDBOX_PREFIX}{time.time_ns()}-{pid}"
        try:
            child.mkdir()
        except OSError as exc:
            if is_perm(exc):
                return DegradeKind.PERMISSION_DENIED
            raise KtstrError(f"create cgroup {child}: {exc}", kind="sandbox-error") from exc
        box = cls(kind, child, env=env, drain_to=drain_to, cpus=cpus, mems=mems)
        try:
            # Order is mandatory: a task in a cpuset with empty mems can be
            # killed on its next allocation, and v1 refuses to attach a task
            # until both cpus and mems are set.
            box._write_checked("cpuset.cpus", cpus, eff_cpus, "cpus", hard=hard)
            box._write_checked("cpuset.mems", mems, eff_mems, "mems", hard=hard)
            try:
                env.writer(child / "cgroup.procs", str(pid))
            except OSError as exc:
                if is_perm(exc):
                    box.teardown()
                    return DegradeKind.PERMISSION_DENIED
                raise KtstrError(
                    f"move pid {pid} into {child}/cgroup.procs: {exc}", kind="sandbox-error"
                ) from exc
        except BaseException:
            box.teardown()
            raise
        return box

    def _write_checked(
        self, fname: str, want: list[int], eff_name: str, what: str, *, hard: bool
    ) -> None:
        assert self.path is not None
        text = format_cpulist(want)
        try:
            self.env.writer(self.path / fname, text)
        except OSError as exc:
            raise KtstrError(
                f"write {fname}={text} in {self.path}: {exc}. The parent cgroup may not "
                f"allow these {what}; compare with {self.path.parent}/{fname}.",
                kind="sandbox-error",
            ) from exc
        eff = read_cpulist_file(self.path / eff_name)
        if eff is None or eff == want:
            return
        warn(
            f"tag=resource_budget.cpuset_{what}_degraded cgroup={self.path.name} "
            f"requested={text} effective={format_cpulist(eff)}"
        )
        if hard:
            extra = (
                " Widen the parent cgroup's cpuset.mems or run under a wider, delegated "
                "cgroup (systemd-run --user --scope -p Delegate=cpuset), or drop --cpu-cap."
                if what == "mems"
                else " Run `ktstr-ci locks --json` to inspect peers."
            )
            raise KtstrError(
                f"--cpu-cap: cpuset.{what} narrowed by parent cgroup (requested {text}, "
                f"effective {format_cpulist(eff)}).{extra}",
                kind="sandbox-degraded",
            )

    # --------------------------------------------------------------- use / drop

    @property
    def active(self) -> bool:
        return self.path is not None and not self._torn_down

    def add_pid(self, pid: int) -> None:
        """Move another process (and its threads) into the sandbox."""
        if not self.active:
            return
        assert self.path is not None
        try:
            self.env.writer(self.path / "cgroup.procs", str(pid))
        except OSError as exc:
            raise KtstrError(
                f"move pid {pid} into {self.path}/cgroup.procs: {exc}", kind="sandbox-error"
            ) from exc

    def join(self) -> None:
        """Move the calling process in; its later children inherit the cgroup by fork."""
        self.add_pid(os.getpid())

    def teardown(self, tag: str | None = None) -> None:
        """Kill the build's processes, move the caller out, remove the cgroup.

        Idempotent; never raises (runs on every exit path). ``tag`` is the
        holder marker of :mod:`ktstr_steps.buildprocs`, when a holder owns it.
        """
        if self._torn_down or self.path is None:
            self._torn_down = True
            return
        self._torn_down = True
        assert self.drain_to is not None
        remove_cgroup_dir(self.path, self.drain_to, writer=self.env.writer, rmdir=self.env.rmdir,
                          tag=tag)

    def release(self, tag: str | None = None) -> None:
        self.teardown(tag)

    def __enter__(self) -> BuildSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    @staticmethod
    def sweep_orphans(env: CgroupEnv | None = None, *, max_age: float = ORPHAN_MAX_AGE) -> list[Path]:
        """Sweep dead-owner ``ktstr-build-*`` dirs under every parent this host would use."""
        env = env or CgroupEnv()
        removed: list[Path] = []
        if env.use_v2:
            p = env.v2_parent_or_degrade()
            if isinstance(p, Path):
                removed += sweep_dir(p, env.v2_drain_target(), max_age=max_age,
                                     writer=env.writer, rmdir=env.rmdir)
        if env.use_v1:
            p = env.v1_parent_or_degrade()
            if isinstance(p, Path):
                removed += sweep_dir(p, p / "cgroup.procs", max_age=max_age,
                                     writer=env.writer, rmdir=env.rmdir)
        return removed

    def to_json(self) -> dict:
        return {"kind": self.kind, "path": str(self.path) if self.path else None}

    def __repr__(self) -> str:
        return f"BuildSandbox(kind={self.kind!r}, path={str(self.path) if self.path else None!r})"
