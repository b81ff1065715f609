"""The cgroup filesystem under a build sandbox: where cgroups are, and how they are written and removed.

:class:`CgroupEnv` finds the parent cgroup of each flavour (v2: the statfs
magic of the cgroup root, the ``0::`` path of this process; v1: the cpuset
hierarchy's mount and this process's ``cpuset`` line), or says why there is
none (:class:`DegradeKind`). Control files are written with a bounded wait, a
cgroup is removed by draining its tasks first, and ``ktstr-build-*`` cgroups
whose owner is gone are swept. Tests redirect every path through
:class:`CgroupEnv` (the seam); production code uses the defaults.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ktstr_steps import flock
from ktstr_steps.buildprocs import describe, kill_build
from ktstr_steps.cpulist import parse_cpulist
from ktstr_steps.liveness import pid_alive
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


def errno_of(exc: BaseException) -> int | None:
    """First OS errno in the exception chain (ktstr walks the chain the same way)."""
    cur: BaseException | None = exc
    while cur is not None:
        if isinstance(cur, OSError) and cur.errno is not None:
            return cur.errno
        cur = cur.__cause__ or cur.__context__
    return None


def is_perm(exc: BaseException) -> bool:
    return errno_of(exc) in (errno.EACCES, errno.EPERM)


def read_cpulist_file(path: Path) -> list[int] | None:
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
        if pid is None or pid_alive(pid):
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



def remove_stale_sandbox(
    path: Path, kind: str, env: CgroupEnv | None = None, tag: str | None = None
) -> bool:
    """Remove a sandbox dir recorded by a holder that died (its pid suffix must be dead).

    Used by the holder's stale sweep: such dirs are younger than the 24 h
    orphan age, but we KNOW their owner is gone because its state file says so.
    """
    env = env or CgroupEnv()
    pid = _pid_of(path.name)
    if pid is None or pid_alive(pid) or not path.exists():
        return not path.exists()
    drain_to = env.v2_drain_target() if kind == "v2" else path.parent / "cgroup.procs"
    return remove_cgroup_dir(path, drain_to, writer=env.writer, rmdir=env.rmdir, tag=tag)
