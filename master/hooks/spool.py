"""The push spool: changes the post-receive hook could not deliver, kept until the master takes them.

Why a spool (and not a ``GitPoller`` beside the hook): the hook already knows
exactly which branch tips a push set, and the master may be down for any
length of time. Writing what it could not deliver next to the repository
keeps every push, in order, with the same fields it would have posted, and
adds nothing while the master is up: no polling, no second copy of the
repository under the master, and no second change for a push the hook did
deliver (a poller would see every hook-delivered push again and build it
twice, or one change per commit of a push).

Layout: ``<bare repo>/ktstr-ci-spool/<ns>-<pid>-<n>.json``, one change per
file, written atomically (temporary file, fsync, rename), so a reader sees a
whole change or none. The name orders the files by when the hook wrote them.
Each file holds the fields of the change-hook POST plus:

* ``spooled_at``: when the hook wrote it (seconds since the epoch);
* ``reason``: why it was not delivered (shown in logs);
* ``delivery``: ``"failed"`` when the master certainly did not store it
  (connection refused, an error answer), ``"unknown"`` when it may have
  (the connection broke or timed out after the request was sent).

A deletion of a branch with a change still queued is spooled too
(``revision`` all zeros): it drops the queued change.

Files the master cannot use are moved to ``rejected/`` with the reason in
``<name>.why``, never deleted unseen.

This module imports no Buildbot code: the hook (a short-lived process per
push) and the master-side drain (:mod:`master.push_spool`) both use it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPOOL_NAME = "ktstr-ci-spool"
REJECTED = "rejected"
DRAIN_LOCK = ".drain.lock"
ZERO = "0" * 40
FORMAT = 1
# Fields of a change, as the hook posts them to /change_hook/base.
CHANGE_FIELDS = ("branch", "revision", "repository", "project", "category", "author",
                 "committer", "comments", "when_timestamp")
DELIVERY_FAILED = "failed"
DELIVERY_UNKNOWN = "unknown"
# A temporary file this old belongs to a hook that died mid-write.
STALE_TMP_S = 600.0


def spool_dir(gitdir: Path) -> Path:
    """The spool directory of the bare repository ``gitdir``."""
    return Path(gitdir) / SPOOL_NAME


def is_deletion(change: dict[str, Any]) -> bool:
    rev = str(change.get("revision") or "")
    return bool(rev) and set(rev) == {"0"}


def write(spooldir: Path, change: dict[str, Any], *, reason: str,
          delivery: str = DELIVERY_FAILED, seq: int = 0) -> Path:
    """Spool one change atomically; returns the file. Raises OSError when it cannot."""
    spooldir.mkdir(parents=True, exist_ok=True)
    record = {k: change.get(k, "") for k in CHANGE_FIELDS}
    record.update(format=FORMAT, spooled_at=time.time(), reason=reason, delivery=delivery)
    name = f"{time.time_ns():020d}-{os.getpid()}-{seq:04d}.json"
    tmp = spooldir / f".{name}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, spooldir / name)
    _fsync_dir(spooldir)
    return spooldir / name


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory is on disk too.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class Entry:
    """One spooled file: its change, or why it cannot be read."""

    path: Path
    change: dict[str, Any] | None
    error: str | None = None

    @property
    def branch(self) -> str | None:
        return None if self.change is None else str(self.change.get("branch") or "")


def pending(spooldir: Path) -> list[Entry]:
    """The spooled changes, oldest first (the order the hook wrote them)."""
    try:
        names = sorted(p.name for p in spooldir.iterdir()
                       if p.is_file() and p.suffix == ".json" and not p.name.startswith("."))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        path = spooldir / name
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            continue  # taken meanwhile
        except (OSError, ValueError) as exc:
            out.append(Entry(path, None, f"unreadable: {exc}"))
            continue
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            out.append(Entry(path, None, f"not a ktstr-ci spool file (format {FORMAT})"))
            continue
        out.append(Entry(path, data))
    return out


def pending_branches(spooldir: Path) -> set[str]:
    """Branches with a change still queued (the hook queues a newer push behind it)."""
    return {e.branch for e in pending(spooldir) if e.change is not None and e.branch}


@dataclass
class Batch:
    """What to do for one branch: add ``newest`` (None: a deletion, add nothing), remove ``files``."""

    branch: str
    newest: Entry | None
    files: list[Path]


def plan(entries: list[Entry]) -> list[Batch]:
    """One batch per branch, in the order of each branch's newest file.

    Only the newest tip of a branch needs building: older queued changes of
    the same branch are superseded (the push scheduler would collapse their
    queued builds anyway), and a queued deletion drops them all.
    """
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        if e.change is None:
            continue
        groups.setdefault(e.branch or "", []).append(e)
    batches = []
    for branch, group in groups.items():
        newest = group[-1]
        batches.append(Batch(branch, None if is_deletion(newest.change or {}) else newest,
                             [e.path for e in group]))
    batches.sort(key=lambda b: b.files[-1].name)
    return batches


def reject(path: Path, why: str) -> Path:
    """Move a spooled file the master cannot use to ``rejected/``, with the reason beside it."""
    dest_dir = path.parent / REJECTED
    dest_dir.mkdir(exist_ok=True)
    dest = dest_dir / path.name
    (dest_dir / f"{path.name}.why").write_text(why.rstrip() + "\n")
    os.replace(path, dest)
    return dest


def remove(paths: list[Path]) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
    if paths:
        _fsync_dir(paths[0].parent)


def remove_stale_tmp(spooldir: Path, now: float | None = None) -> None:
    """Drop temporary files of hooks that died mid-write (never renamed, never a change)."""
    now = time.time() if now is None else now
    try:
        tmps = [p for p in spooldir.iterdir() if p.name.startswith(".") and p.suffix == ".tmp"]
    except FileNotFoundError:
        return
    for p in tmps:
        try:
            if now - p.stat().st_mtime > STALE_TMP_S:
                p.unlink()
        except FileNotFoundError:
            pass


def try_lock_drain(spooldir: Path) -> int | None:
    """Take the spool's drain lock without waiting; returns the fd to unlock, or None.

    Only one drainer at a time (two masters sharing a host and its bare
    repository must not add the same change twice); the hook never takes it.
    """
    try:
        spooldir.mkdir(parents=True, exist_ok=True)
        fd = os.open(spooldir / DRAIN_LOCK, os.O_RDWR | os.O_CREAT, 0o660)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def unlock_drain(fd: int) -> None:
    os.close(fd)  # closing the only descriptor releases the flock
