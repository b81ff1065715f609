"""Bounded download cache: the least recently used tarballs go first, one in use never.

``[matrix] download_max_files`` and ``download_max_gb`` (``0`` = no limit).
A tarball counts as used when it is downloaded or found in the cache (its
modification time is set then). Each tarball's lock file (``.<name>.lock``)
is held exclusively while it downloads and shared while a tree is extracted
from it (:func:`tarball_in_use`); a tarball whose lock is held is never
removed. Every removal is said on stderr and appended to the cache's
``.downloads.log``, which ``ktstr-ci trees --downloads`` shows.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ktstr_steps import flock
from ktstr_steps.flock import FileLock
from ktstr_steps.messages import say
from ktstr_steps.treestore.inventory import append_capped, read_tail

REMOVALS_LOG = ".downloads.log"
_TARBALL = re.compile(r"^linux-.+\.tar\.(?:xz|gz)$")
GIB = 1024**3


def lock_path(tarball: Path) -> Path:
    """The tarball's lock file, the one the download takes."""
    return tarball.with_name(f".{tarball.name}.lock")


@contextmanager
def tarball_in_use(tarball: Path) -> Iterator[None]:
    """Hold the tarball shared (waiting for a download of it to end) while reading it."""
    fd = flock.open_lockfile(lock_path(tarball))
    try:
        flock.block_flock(fd, exclusive=False)
        yield
    finally:
        os.close(fd)


def touch(tarball: Path) -> None:
    """Mark a tarball as used now (least recently used goes first)."""
    try:
        os.utime(tarball)
    except OSError:
        pass


@dataclass(frozen=True)
class Tarball:
    path: Path
    size: int
    last_used: float
    locked: bool

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "name": self.path.name, "size": self.size,
                "last_used": round(self.last_used, 3), "locked": self.locked}


def _locked(tarball: Path) -> bool:
    lock = FileLock.try_acquire(lock_path(tarball), exclusive=True)
    if lock is None:
        return True
    lock.release()
    return False


def tarballs(cache: Path) -> list[Tarball]:
    """The tarballs of the download cache, least recently used first."""
    out = []
    try:
        entries = list(Path(cache).iterdir())
    except OSError:
        return []
    for path in entries:
        if not _TARBALL.match(path.name):
            continue
        try:
            st = path.stat()
        except OSError:
            continue
        out.append(Tarball(path, st.st_blocks * 512, st.st_mtime, _locked(path)))
    return sorted(out, key=lambda t: t.last_used)


def _remove(cache: Path, t: Tarball, reason: str) -> dict[str, Any] | None:
    lock = FileLock.try_acquire(lock_path(t.path), exclusive=True)
    if lock is None:
        return None
    try:
        t.path.unlink(missing_ok=True)
    finally:
        lock.release()
    record = {"removed_at": round(time.time(), 3), "reason": reason, **t.to_json()}
    append_capped(cache / REMOVALS_LOG, record)
    say(f"removed {t.path.name} from the download cache ({t.size / GIB:.2f} GiB): {reason}")
    return record


def prune_downloads(cache: Path, *, max_files: int = 0, max_gb: float = 0.0,
                    keep: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """Remove least recently used tarballs until both limits hold; the removal records."""
    if max_files <= 0 and max_gb <= 0:
        return []
    cache = Path(cache)
    found = tarballs(cache)
    kept = {Path(p).resolve() for p in keep}
    count = len(found)
    total = sum(t.size for t in found)
    removed = []
    for t in found:
        over_files = max_files > 0 and count > max_files
        over_size = max_gb > 0 and total > max_gb * GIB
        if not (over_files or over_size):
            break
        if t.locked or t.path.resolve() in kept:
            continue
        reason = (f"{count} tarballs, more than download_max_files = {max_files}" if over_files
                  else f"{total / GIB:.2f} GiB, more than download_max_gb = {max_gb:g}")
        record = _remove(cache, t, reason)
        if record is not None:
            removed.append(record)
            count -= 1
            total -= t.size
    return removed


def removals(cache: Path, last: int = 50) -> list[dict[str, Any]]:
    """The last ``last`` tarball removals of the download cache, oldest first."""
    return read_tail(Path(cache) / REMOVALS_LOG, last)
