"""ktstr's lock files: open (refusing remote filesystems), flock, and who holds them.

Locks are BSD ``flock``s on files opened ``O_CREAT|O_RDWR|O_CLOEXEC`` with mode
0666, one open file description per lock, so two threads of one process
contend like two processes. Holders are read from
``/proc/locks``: only FLOCK lines count, ``->`` lines are
waiters, and a lock file is matched by ``major:minor:inode``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from ktstr_steps.errors import KtstrError

# statfs f_type magics ktstr refuses for lock files: flock on
# these is emulated, local-only or silently a no-op.
REMOTE_FS = {
    0x6969: "NFS",
    0xFF534D42: "CIFS/SMB",
    0xFE534D42: "SMB2",
    0x00C36400: "CephFS",
    0x6B414653: "AFS",
    0x65735546: "FUSE",
}
_REMOTE_REASON = {
    "NFS": "flock is emulated with POSIX locks over NFS and is not coherent across clients",
    "CIFS/SMB": "SMB byte-range locks do not implement flock semantics",
    "SMB2": "SMB byte-range locks do not implement flock semantics",
    "CephFS": "flock is advisory per client and not coherent for ktstr's use",
    "AFS": "AFS locks are whole-volume and not flock-compatible",
    "FUSE": "flock support depends on the FUSE daemon and may be a no-op",
}
PROC_LOCKS = Path("/proc/locks")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def fs_type(path: Path) -> int | None:
    """statfs(2) f_type of ``path``, or None when statfs fails (ktstr then accepts)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86_64/arm64
    if _libc.statfs(os.fsencode(str(path)), buf) != 0:
        return None
    # f_type is the first member, a native long on every Linux ABI we run on.
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def check_lockfile_fs(path: Path) -> None:
    """Refuse a lock file on a filesystem where flock cannot be trusted (ktstr's message)."""
    probe = path if path.exists() else path.parent
    kind = REMOTE_FS.get(fs_type(probe) or 0)
    if kind is not None:
        raise KtstrError(
            f"{path}: filesystem {kind} is not supported for ktstr lockfiles "
            f"({_REMOTE_REASON[kind]}). Move the lockfile path to a local filesystem "
            "(tmpfs, ext4, xfs, btrfs, f2fs, bcachefs).",
            kind="lockfile-remote-fs",
        )


def open_lockfile(path: Path) -> int:
    """Open (creating) a lock file; a clear error when its directory is not usable."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KtstrError(
            f"cannot create lock directory {path.parent}: {exc.strerror}. "
            "Make it writable, or point KTSTR_CACHE_DIR at a writable local directory.",
            kind="lockfile-unusable",
        ) from exc
    check_lockfile_fs(path)
    try:
        return os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise KtstrError(
            f"cannot open lockfile {path}: {exc.strerror}. Make {path.parent} writable "
            "(or remove a stale lockfile owned by another user).",
            kind="lockfile-unusable",
        ) from exc


def try_flock(fd: int, *, exclusive: bool) -> bool:
    """One non-blocking attempt; False when someone else holds a conflicting lock."""
    op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    try:
        fcntl.flock(fd, op)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise


def flock_poll(
    fd: int,
    *,
    exclusive: bool,
    timeout: float,
    poll: float = 0.1,
    on_wait: Callable[[float], None] | None = None,
) -> bool:
    """Poll for the lock up to ``timeout`` seconds; ``on_wait(elapsed)`` between tries."""
    start = time.monotonic()
    while True:
        if try_flock(fd, exclusive=exclusive):
            return True
        elapsed = time.monotonic() - start
        if elapsed >= timeout:
            return False
        if on_wait is not None:
            on_wait(elapsed)
        time.sleep(min(poll, max(0.0, timeout - elapsed)))


def block_flock(fd: int, *, exclusive: bool) -> None:
    """Blocking flock: the waiter shows in /proc/locks as a ``->`` line (as ktstr's does)."""
    fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)


@dataclass(frozen=True)
class LockLine:
    """One line of /proc/locks."""

    kind: str  # FLOCK, POSIX, OFDLCK, LEASE
    mode: str  # READ or WRITE
    pid: int
    dev: tuple[int, int]
    inode: int
    waiter: bool


def read_proc_locks(text: str | None = None) -> list[LockLine]:
    """Parse /proc/locks (or ``text``); malformed lines are skipped, not fatal."""
    if text is None:
        try:
            text = PROC_LOCKS.read_text()
        except OSError:
            return []
    out: list[LockLine] = []
    for raw in text.splitlines():
        fields = raw.split()
        waiter = len(fields) > 1 and fields[1] == "->"
        if waiter:
            fields = fields[:1] + fields[2:]
        if len(fields) < 6:
            continue
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
            out.append(
                LockLine(
                    kind=fields[1],
                    mode=fields[3],
                    pid=pid,
                    dev=(int(major, 16), int(minor, 16)),
                    inode=int(inode),
                    waiter=waiter,
                )
            )
        except ValueError:
            continue
    return out


def _mountinfo_dev(path: Path) -> tuple[int, int] | None:
    """major:minor of the longest mount point covering ``path`` (ktstr's needle source)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    target = str(path.resolve())
    best: tuple[int, tuple[int, int]] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        mnt = fields[4].encode().decode("unicode_escape")  # \040 etc.
        if target == mnt or target.startswith(mnt.rstrip("/") + "/") or mnt == "/":
            major, minor = fields[2].split(":")
            if best is None or len(mnt) > best[0]:
                best = (len(mnt), (int(major), int(minor)))
    return best[1] if best else None


def lock_identity(path: Path) -> tuple[set[tuple[int, int]], int] | None:
    """Device numbers a lock on ``path`` may show under in /proc/locks, and its inode."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    devs = {(os.major(st.st_dev), os.minor(st.st_dev))}
    mdev = _mountinfo_dev(path)
    if mdev is not None:
        devs.add(mdev)
    return devs, st.st_ino


@dataclass(frozen=True)
class Holder:
    pid: int
    mode: str  # READ (shared) or WRITE (exclusive)
    cmd: str

    def to_json(self) -> dict:
        return {"pid": self.pid, "mode": self.mode, "cmd": self.cmd}


def cmdline_of(pid: int) -> str:
    """``/proc/PID/cmdline`` as ktstr shows it: spaces, trimmed, 100 chars + ``…``."""
    try:
        cmd = " ".join(psutil.Process(pid).cmdline()).strip()
    except (psutil.Error, OSError):
        return "<cmdline unavailable>"
    if not cmd:
        return "<cmdline unavailable>"
    return cmd if len(cmd) <= 100 else cmd[:100] + "…"


def _matching(path: Path, lines: list[LockLine] | None, *, waiters: bool) -> list[LockLine]:
    ident = lock_identity(path)
    if ident is None:
        return []
    devs, inode = ident
    if lines is None:
        lines = read_proc_locks()
    return [
        ln
        for ln in lines
        if ln.kind == "FLOCK" and ln.waiter == waiters and ln.inode == inode and ln.dev in devs
    ]


def holders(path: Path, lines: list[LockLine] | None = None) -> list[Holder]:
    """Distinct PIDs holding a flock on ``path`` in any mode; waiters excluded."""
    seen: dict[int, Holder] = {}
    for ln in _matching(path, lines, waiters=False):
        if ln.pid not in seen:
            seen[ln.pid] = Holder(ln.pid, ln.mode, cmdline_of(ln.pid))
    return list(seen.values())


def waiters(path: Path, lines: list[LockLine] | None = None) -> list[int]:
    """PIDs blocked in flock on ``path`` (the ``->`` lines)."""
    return sorted({ln.pid for ln in _matching(path, lines, waiters=True)})


def format_holders(found: list[Holder]) -> str:
    """ktstr's holder list: one ``  pid=P cmd=C`` line each, or ``<none recorded>``."""
    if not found:
        return "<none recorded>"
    return "\n".join(f"  pid={h.pid} cmd={h.cmd}" for h in found)


class FileLock:
    """An flock held on one lock file; ``release()`` (or leaving ``with``) drops it."""

    def __init__(self, path: Path, fd: int, *, exclusive: bool) -> None:
        self.path = Path(path)
        self.fd: int | None = fd
        self.exclusive = exclusive

    @classmethod
    def try_acquire(cls, path: Path, *, exclusive: bool) -> FileLock | None:
        fd = open_lockfile(path)
        if try_flock(fd, exclusive=exclusive):
            return cls(path, fd, exclusive=exclusive)
        os.close(fd)
        return None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            # Unlock explicitly: a holder hands copies of this descriptor to the
            # commands of its build, and a release must not wait for their exit.
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        mode = "EX" if self.exclusive else "SH"
        return f"FileLock({str(self.path)!r}, {mode}, held={self.held})"
