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

Tests redirect every path through :class:`CgroupEnv` (the seam); production
code uses the defaults.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ktstr_steps import flock
from ktstr_steps.buildprocs import describe, kill_build
from ktstr_steps.cpulist import format_cpulist, parse_cpulist
from ktstr_steps.errors import KtstrError
from ktstr_steps.messages import say, warn

CGROUP2_SUPER_MAGIC = 0x63677270
SANDBOX_PREFIX = "ktstr-build-"
# A ktstr-build-* dir whose owner pid is gone is only swept once it is this old:
# a young one may belong to a run whose pid was just recycled (ktstr's 24 h).
ORPHAN_MAX_AGE = 24 * 60 * 60.0
# cgroup writes can block (cgroup_threadgroup_rwsem, a frozen task); ktstr bounds
# each write at 2 s so a wedged cgroupfs cannot hang the build forever.
WRITE_TIMEOUT = 2.0
RMDIR_ATTEMPTS = 5


class DegradeKind(Enum):
    """Why no sandbox could be made. Values are the human descriptions (ktstr's wording)."""

    NO_CGROUP_V2 = "cgroup v2 not mounted at /sys/fs/cgroup"
    ROOT_CGROUP_REFUSED = (
        "caller's cgroup is the cgroup v2 root (0::/); sandbox creation at the root "
        "violates the no-internal-process rule"
    )
    NO_CPUSET_CONTROLLER = "parent cgroup does not expose cpuset controller"
    SUBTREE_CONTROL_REFUSED = "parent cgroup rejected +cpuset subtree_control"
    PERMISSION_DENIED = "insufficient permission to create / write cgroup files"
    # v1 (our addition)
    NO_CPUSET_V1 = "no cgroup v1 cpuset hierarchy is mounted either"
    NO_CPUSET_V1_PATH = "no cpuset line in /proc/self/cgroup for the v1 cpuset hierarchy"


def _write_direct(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def write_cgroup_file(path: Path, text: str, *, timeout: float = WRITE_TIMEOUT) -> None:
    """Write one cgroup control file, giving up after ``timeout`` seconds (as ktstr does).

    The write runs in a daemon thread because a blocked write(2) cannot be
    interrupted from Python; on timeout the thread is abandoned (it dies with
    the process) and ETIMEDOUT is raised so callers classify it like any errno.
    """
    box: dict[str, BaseException | None] = {"exc": None}

    def run() -> None:
        try:
            _write_direct(path, text)
        except BaseException as exc:  # handed to the caller below
            box["exc"] = exc

    t = threading.Thread(target=run, name=f"cgroup-write {path.name}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise OSError(errno.ETIMEDOUT, f"write to {path} timed out after {timeout:g}s")
    if box["exc"] is not None:
        raise box["exc"]


@dataclass
class CgroupEnv:
    """Where the sandbox looks for cgroups. Defaults are the real host; tests override."""

    cgroup_root: Path = Path("/sys/fs/cgroup")
    proc_cgroup: Path = Path("/proc/self/cgroup")
    mountinfo: Path = Path("/proc/self/mountinfo")
    fs_magic: Callable[[Path], int | None] = flock.fs_type
    # Seams: force the parent directory of each flavour (tests make their own
    # parent cgroup so sweeps and listings never touch real builds).
    v2_parent: Path | None = None
    v1_parent: Path | None = None
    use_v2: bool = True
    use_v1: bool = True
    writer: Callable[[Path, str], None] = field(default=write_cgroup_file)
    rmdir: Callable[[Path], None] = field(default=os.rmdir)

    # --- v2 discovery: cgroup2 mount, our cgroup, its cpuset controller -------

    def v2_parent_or_degrade(self) -> Path | DegradeKind:
        if self.v2_parent is not None:
            return self.v2_parent
        if self.fs_magic(self.cgroup_root) != CGROUP2_SUPER_MAGIC:
            return DegradeKind.NO_CGROUP_V2
        rel = self._proc_cgroup_path(lambda h, c: h == "0" and c == "")
        if rel is None:
            return DegradeKind.NO_CGROUP_V2
        if rel.strip() in ("", "/"):
            return DegradeKind.ROOT_CGROUP_REFUSED
        return self.cgroup_root / rel.strip().lstrip("/")

    def v2_drain_target(self) -> Path:
        # ktstr parks drained tasks in the v2 ROOT: the parent had +cpuset
        # written to its subtree_control, and the no-internal-process rule
        # forbids tasks in a non-root cgroup that delegates controllers.
        return self.cgroup_root / "cgroup.procs"

    # --- v1 discovery (our addition) -----------------------------------------

    def v1_mount(self) -> tuple[Path, str] | None:
        """(mount point, mount root) of the v1 hierarchy carrying cpuset, from mountinfo."""
        try:
            lines = self.mountinfo.read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            pre, sep, post = line.partition(" - ")
            if not sep:
                continue
            fields, tail = pre.split(), post.split()
            if len(fields) < 5 or len(tail) < 3 or tail[0] != "cgroup":
                continue
            if "cpuset" in tail[2].split(","):
                mnt = fields[4].encode().decode("unicode_escape")
                return Path(mnt), fields[3]
        return None

    def v1_parent_or_degrade(self) -> Path | DegradeKind:
        if self.v1_parent is not None:
            return self.v1_parent
        mount = self.v1_mount()
        if mount is None:
            return DegradeKind.NO_CPUSET_V1
        mnt, mroot = mount
        rel = self._proc_cgroup_path(lambda h, c: h != "0" and "cpuset" in c.split(","))
        if rel is None:
            return DegradeKind.NO_CPUSET_V1_PATH
        rel = rel.strip()
        # A bind-mounted sub-hierarchy (containers) has a mount root other
        # than "/"; /proc/self/cgroup paths are relative to the hierarchy root.
        if mroot not in ("", "/") and (rel == mroot or rel.startswith(mroot.rstrip("/") + "/")):
            rel = rel[len(mroot.rstrip("/")) :]
        return mnt / rel.lstrip("/") if rel.strip("/") else mnt

    def _proc_cgroup_path(self, match: Callable[[str, str], bool]) -> str | None:
        try:
            text = self.proc_cgroup.read_text()
        except OSError:
            return None
        for line in text.splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3 and match(parts[0], parts[1]):
                return parts[2]
        return None


def _errno(exc: BaseException) -> int | None:
    """First OS errno in the exception chain (ktstr walks the chain the same way)."""
    cur: BaseException | None = exc
    while cur is not None:
        if isinstance(cur, OSError) and cur.errno is not None:
            return cur.errno
        cur = cur.__cause__ or cur.__context__
    return None


def _is_perm(exc: BaseException) -> bool:
    return _errno(exc) in (errno.EACCES, errno.EPERM)


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


def _read_list(path: Path) -> list[int] | None:
    """An ``.effective`` file as a CPU/node list; None when absent (cannot verify)."""
    try:
        return parse_cpulist(path.read_text())
    except (OSError, ValueError):
        return None


def _pid_of(name: str) -> int | None:
    if not name.startswith(SANDBOX_PREFIX):
        return None
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _pid_alive(pid: int) -> bool:
    """kill(pid, 0): only ESRCH means gone; EPERM (another user's pid) counts as alive.

    A zombie also counts as gone (our addition): it holds no cgroup membership
    and no flocks, and a killed holder stays one until someone reaps it.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def _procs(cgdir: Path) -> list[int]:
    try:
        return [int(x) for x in (cgdir / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def drain(cgdir: Path, target: Path, writer: Callable[[Path, str], None] = write_cgroup_file) -> None:
    """Move every task of ``cgdir`` into ``target`` (a cgroup.procs file); ESRCH ignored."""
    for pid in _procs(cgdir):
        try:
            writer(target, str(pid))
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                warn(f"cgroup drain: could not move pid {pid} out of {cgdir}: {exc}")


def remove_cgroup_dir(
    cgdir: Path,
    drain_to: Path,
    *,
    writer: Callable[[Path, str], None] = write_cgroup_file,
    rmdir: Callable[[Path], None] = os.rmdir,
    tag: str | None = None,
) -> bool:
    """Kill the build's processes, drain the caller, rmdir. True when the directory is gone.

    Every member but the calling process is killed first (and any process
    carrying the holder ``tag``): a build process moved out to the parent
    cgroup would run on with no reservation and no lock, in a tree the next
    build enters. Only the caller itself (the holder, or the command that
    made the sandbox around itself) is moved out, then the directory is
    removed with ktstr's retries.
    """
    killed, survivors = kill_build(cgdir, tag)
    if killed:
        say(f"killed {len(killed)} leftover build process(es) in {cgdir.name}: {describe(killed)}")
    if survivors:
        warn(f"build processes {survivors} in {cgdir} did not die after SIGKILL "
             "(uninterruptible sleep?); the cgroup stays until they do")
    for attempt in range(RMDIR_ATTEMPTS):
        drain(cgdir, drain_to, writer)
        time.sleep(0.05)  # let just-moved tasks' references on the cgroup drop
        try:
            rmdir(cgdir)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno == errno.EBUSY and attempt + 1 < RMDIR_ATTEMPTS:
                time.sleep(0.01)
                continue
            warn(f"tag=resource_budget.cgroup_orphan_left cgroup={cgdir}: {exc}")
            return False
    return False


def sweep_dir(
    parent: Path,
    drain_to: Path,
    *,
    max_age: float = ORPHAN_MAX_AGE,
    now: float | None = None,
    writer: Callable[[Path, str], None] = write_cgroup_file,
    rmdir: Callable[[Path], None] = os.rmdir,
) -> list[Path]:
    """Remove ``ktstr-build-*`` children of ``parent`` whose pid is dead and mtime old."""
    removed: list[Path] = []
    now = time.time() if now is None else now
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        pid = _pid_of(entry.name)
        if pid is None or _pid_alive(pid):
            continue
        try:
            age = now - entry.stat().st_mtime
        except OSError:
            continue  # mtime unreadable: ktstr skips
        if age < max_age:
            continue
        if remove_cgroup_dir(entry, drain_to, writer=writer, rmdir=rmdir):
            removed.append(entry)
    return removed


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
                if _is_perm(exc):
                    return DegradeKind.PERMISSION_DENIED
                if _errno(exc) == errno.EBUSY:
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
            if _is_perm(exc):
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
                if _is_perm(exc):
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
        eff = _read_list(self.path / eff_name)
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


def remove_stale_sandbox(
    path: Path, kind: str, env: CgroupEnv | None = None, tag: str | None = None
) -> bool:
    """Remove a sandbox dir recorded by a holder that died (its pid suffix must be dead).

    Used by the holder's stale sweep: such dirs are younger than the 24 h
    orphan age, but we KNOW their owner is gone because its state file says so.
    """
    env = env or CgroupEnv()
    pid = _pid_of(path.name)
    if pid is None or _pid_alive(pid) or not path.exists():
        return not path.exists()
    drain_to = env.v2_drain_target() if kind == "v2" else path.parent / "cgroup.procs"
    return remove_cgroup_dir(path, drain_to, writer=env.writer, rmdir=env.rmdir, tag=tag)
