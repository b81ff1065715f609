"""What the tree store holds: per-branch trees and extracted release trees, with their stamps.

Layout (``[paths] tree_store``)::

    <store>/<builder>/<branch dir>/     a per-branch git tree of one builder
    <store>/tarballs/<cache key>/       a release tree extracted by a matrix cell
    <store>/.git-objects/<repo>.git     the shared object store (never listed, never pruned)
    <store>/.tree-store.log             one JSON line per removed tree

Each git tree carries a stamp, ``.git/ktstr-ci-tree.json`` (builder, branch,
when a build last used it, which tree it was seeded from): the branch name
cannot be read back from the directory name, which is made path-safe. A tree
is *locked* while a build holds its source-tree lock; locked trees are shown
as such and never seeded from or removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ktstr_steps.flock import FileLock
from ktstr_steps.liveness import pid_alive
from ktstr_steps.source import run_git
from ktstr_steps.tree_lock import source_lock_path
from ktstr_steps.treestore.mirror import OBJECTS_DIR

STAMP = "ktstr-ci-tree.json"
TARBALLS = "tarballs"
REMOVALS_LOG = ".tree-store.log"
# A tree being made or removed by process PID: ".<name>.<seeding|fresh|removing>-<PID>".
_WORK_DIR = re.compile(r"^\..+\.(?:seeding|fresh|removing)-(\d+)$")


@dataclass
class Tree:
    """One tree of the store."""

    path: Path
    builder: str  # the builder directory, or "tarballs"
    branch: str | None  # None for release trees
    commit: str | None
    last_built: float  # epoch seconds: the last build that used it (stamp, else mtime)
    locked: bool = False
    size: int | None = None  # bytes on disk, when measured

    @property
    def kind(self) -> str:
        return "release" if self.builder == TARBALLS else "branch"

    def label(self, store: Path) -> str:
        """``<store name>/<builder>/<branch>``: how logs name a tree."""
        return f"{store.name}/{self.builder}/{self.branch or self.path.name}"

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "builder": self.builder,
                "branch": self.branch, "commit": self.commit,
                "last_built": round(self.last_built, 3), "last_built_text": when(self.last_built),
                "locked": self.locked, "size": self.size}  # fmt: skip


def when(epoch: float) -> str:
    """Local ``YYYY-MM-DD HH:MM``, as logs show times."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))


def read_stamp(tree: Path) -> dict[str, Any]:
    try:
        data = json.loads((tree / ".git" / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_stamp(tree: Path, **fields: Any) -> None:
    """Merge ``fields`` into the tree's stamp (atomically: a reader never sees half of it)."""
    data = {**read_stamp(tree), **fields}
    path = tree / ".git" / STAMP
    tmp = path.with_name(f".{STAMP}.{os.getpid()}")
    tmp.write_text(json.dumps(data, sort_keys=True) + "\n")
    os.replace(tmp, path)


def head_commit(tree: Path) -> str | None:
    r = run_git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], cwd=tree)
    sha = r.stdout.strip()
    return sha if r.returncode == 0 and sha else None


def is_locked(tree: Path, cache_root: Path) -> bool:
    """Whether a build holds the tree's source lock right now (a probe: nothing stays held)."""
    lock = try_lock(tree, cache_root, exclusive=True)
    if lock is None:
        return True
    lock.release()
    return False


def try_lock(tree: Path, cache_root: Path, *, exclusive: bool) -> FileLock | None:
    """The tree's source lock without waiting, or None while a build holds it."""
    canonical = str(Path(tree).resolve())
    return FileLock.try_acquire(source_lock_path(canonical, cache_root), exclusive=exclusive)


def disk_usage(path: Path) -> int:
    """Bytes allocated below ``path`` (``du``'s count, symlinks not followed)."""
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
        except OSError:
            continue
    return total


def _tree(path: Path, builder: str, *, cache_root: Path | None, sizes: bool) -> Tree:
    if builder == TARBALLS:
        branch = commit = None
        try:
            last = path.stat().st_mtime
        except OSError:
            last = 0.0
    else:
        stamp = read_stamp(path)
        branch = stamp.get("branch") if isinstance(stamp.get("branch"), str) else None
        commit = head_commit(path)
        last = stamp.get("last_built")
        if not isinstance(last, (int, float)):
            last = (path / ".git").stat().st_mtime
    tree = Tree(path=path, builder=builder, branch=branch, commit=commit, last_built=float(last))
    if cache_root is not None:
        tree.locked = is_locked(path, cache_root)
    if sizes:
        tree.size = disk_usage(path)
    return tree


def builder_trees(builder_dir: Path, *, cache_root: Path | None = None,
                  sizes: bool = False) -> list[Tree]:
    """The git trees of one builder directory (temporary and hidden directories skipped)."""
    out = []
    try:
        entries = sorted(builder_dir.iterdir())
    except FileNotFoundError:
        return []
    for path in entries:
        if path.name.startswith(".") or not (path / ".git").is_dir():
            continue
        out.append(_tree(path, builder_dir.name, cache_root=cache_root, sizes=sizes))
    return out


def store_trees(store: Path, *, cache_root: Path | None = None,
                sizes: bool = False) -> list[Tree]:
    """Every tree of the store: per-branch trees of every builder, then release trees."""
    out: list[Tree] = []
    try:
        dirs = sorted(p for p in Path(store).iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
    for d in dirs:
        if d.name.startswith(".") or d.name == OBJECTS_DIR:
            continue
        if d.name == TARBALLS:
            for path in sorted(d.iterdir()):
                if path.is_dir() and not path.name.startswith("."):
                    out.append(_tree(path, TARBALLS, cache_root=cache_root, sizes=sizes))
            continue
        out.extend(builder_trees(d, cache_root=cache_root, sizes=sizes))
    return out


def append_capped(path: Path, record: dict[str, Any], keep: int = 500) -> None:
    """Append one JSON line; past ``2 * keep`` lines only the newest ``keep`` are kept."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    try:
        if path.stat().st_size < 2 * keep * 200:  # cheap test first: lines are ~300 bytes
            return
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        if len(lines) > 2 * keep:
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text("".join(lines[-keep:]), encoding="utf-8")
            os.replace(tmp, path)
    except OSError:
        pass


def log_removal(store: Path, record: dict[str, Any]) -> None:
    append_capped(Path(store) / REMOVALS_LOG, record)


def removals(store: Path, last: int = 50) -> list[dict[str, Any]]:
    """The last ``last`` removals recorded in the store, oldest first."""
    return read_tail(Path(store) / REMOVALS_LOG, last)


def read_tail(path: Path, last: int = 50) -> list[dict[str, Any]]:
    """The last ``last`` records of an ``append_capped`` log, oldest first; unreadable
    lines (a write cut short) are left out."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines[-last:]:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def sweep_leftovers(directory: Path) -> list[Path]:
    """Remove half-made or half-removed trees whose process died (a build killed mid-copy)."""
    swept = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return []
    for path in entries:
        m = _WORK_DIR.match(path.name)
        if m and path.is_dir() and not pid_alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            swept.append(path)
    return swept
