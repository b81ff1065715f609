"""The source-tree lock: one build per local kernel tree at a time.

``<cache_root>/.locks/source-{crc32 of the canonical path bytes}.lock``, held
exclusively from after the LLC reservation to the end of the build. Under the
cache root, not /tmp, so tmp cleaners cannot unlink a lock file in use.

ktstr's behaviour: on contention announce the holder and *block* (the waiter is
visible in /proc/locks as a ``->`` line) instead of failing. Our addition:
``wait=N`` polls for at most N seconds and then fails with a clear error. The
caller re-checks the cache after a wait (``TreeLock.waited > 0``), which ktstr
meant to do but does not: a peer that just built the same kernel is a cache hit.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ktstr_steps import flock
from ktstr_steps.cache.root import LOCK_DIR
from ktstr_steps.errors import ResourceContention
from ktstr_steps.flock import FileLock, Holder
from ktstr_steps.keys import crc32_hex
from ktstr_steps.messages import LABEL, say


def _raw(canonical: Path | bytes | str) -> bytes:
    # The raw OS bytes (non-UTF-8 paths hash as they are on disk), never re-encoded.
    return canonical if isinstance(canonical, bytes) else os.fsencode(canonical)


def source_lock_path(canonical: Path | bytes | str, cache_root: Path) -> Path:
    """``<cache_root>/.locks/source-{crc32}.lock``; the path is not canonicalised here."""
    return Path(cache_root) / LOCK_DIR / f"source-{crc32_hex(_raw(canonical))}.lock"


class TreeLock(FileLock):
    """The exclusive source-tree flock; ``waited`` seconds spent blocked, ``holders_seen``."""

    def __init__(
        self, path: Path, fd: int, *, waited: float = 0.0, holders_seen: list[Holder] | None = None
    ) -> None:
        super().__init__(path, fd, exclusive=True)
        self.waited = waited
        self.holders_seen = list(holders_seen or [])

    def to_json(self) -> dict:
        return {
            "lockfile": str(self.path),
            "waited_seconds": round(self.waited, 3),
            "holders_seen": [{"pid": h.pid, "cmd": h.cmd} for h in self.holders_seen],
        }


def acquire_source_tree_lock(
    canonical: Path | bytes | str,
    cache_root: Path,
    *,
    wait: float | None = None,
) -> TreeLock:
    """Take the tree's exclusive lock; on contention announce the holder, then wait.

    ``wait=None`` blocks in flock(2) for as long as it takes (as ktstr). ``wait=N``
    polls and raises ResourceContention after N seconds. Nothing stays held or
    open on any error path (including KeyboardInterrupt while blocked).
    """
    path = source_lock_path(canonical, cache_root)
    fd = flock.open_lockfile(path)  # creates .locks/ on demand; refuses remote fs
    try:
        if flock.try_flock(fd, exclusive=True):
            return TreeLock(path, fd)
        seen = flock.holders(path)
        shown = os.fsdecode(_raw(canonical))
        holder_text = (
            flock.format_holders(seen) if seen else "(holder not identified via /proc/locks)"
        )
        say(
            f"source tree {shown} is locked by a concurrent ktstr build — waiting for it to "
            f"finish.\n{holder_text}"
        )
        start = time.monotonic()
        if wait is None:
            flock.block_flock(fd, exclusive=True)
        elif not flock.flock_poll(fd, exclusive=True, timeout=max(0.0, wait), poll=0.2):
            now = flock.holders(path)
            raise ResourceContention(
                f"source tree {shown} is still locked by a concurrent ktstr build after "
                f"{wait:g}s (lockfile {path}); holders:\n{flock.format_holders(now)}\n"
                f"Wait for the peer to finish, or run `{LABEL} locks` to identify it."
            )
        return TreeLock(path, fd, waited=time.monotonic() - start, holders_seen=seen)
    except BaseException:
        os.close(fd)
        raise
