"""Bounded disk for the tree store: the least recently built trees go first.

Two limits (``[paths]`` ``max_trees`` and ``max_gb``): at most ``max_trees``
trees per builder directory (release trees count as one builder,
``tarballs``), and at most ``max_gb`` GiB for all trees together (the shared
git objects are not counted: they are what makes a tree small). ``0`` turns a
limit off. A tree a build holds (its source lock is taken) is never touched,
and neither is the tree the calling build is about to use. Every removal is
said on stderr and appended to the store's removal log, which
``ktstr-ci trees`` shows.

A tree is removed under its exclusive source lock: renamed out of the way
first (so no build can find half of it), then deleted.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ktstr_steps.messages import say
from ktstr_steps.treestore import inventory
from ktstr_steps.treestore.inventory import Tree

GIB = 1024**3


@dataclass(frozen=True)
class Limits:
    max_trees: int = 0  # per builder; 0 = no limit
    max_gb: float = 0.0  # all trees; 0 = no limit

    @property
    def active(self) -> bool:
        return self.max_trees > 0 or self.max_gb > 0


def _remove(store: Path, tree: Tree, cache_root: Path, reason: str) -> dict[str, Any] | None:
    lock = inventory.try_lock(tree.path, cache_root, exclusive=True)
    if lock is None:
        return None  # a build took it since it was listed
    try:
        gone = tree.path.with_name(f".{tree.path.name}.removing-{os.getpid()}")
        os.rename(tree.path, gone)
        shutil.rmtree(gone, ignore_errors=True)
    finally:
        lock.release()
    record = {"removed_at": round(time.time(), 3), "reason": reason, **tree.to_json()}
    inventory.log_removal(store, record)
    size = f", {tree.size / GIB:.2f} GiB" if tree.size is not None else ""
    say(f"removed tree {tree.label(store)} (last built {inventory.when(tree.last_built)}"
        f"{size}): {reason}")
    return record


def _fs_used(path: Path) -> int:
    """Bytes in use on the filesystem holding ``path``: an upper bound of the store's size."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 1 << 62  # unknown: measure
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def prune_store(store: Path, limits: Limits, cache_root: Path, *,
                keep: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """Remove least recently built trees until ``limits`` hold; the removal records."""
    if not limits.active:
        return []
    store = Path(store)
    keep_set = {Path(p).resolve() for p in keep}
    for group in [store, *[d for d in store.iterdir() if d.is_dir()]] if store.is_dir() else []:
        inventory.sweep_leftovers(group)
    # Measuring sizes walks every file of every tree (a second or more per kernel
    # tree): skip it when the whole filesystem uses less than the budget.
    by_size = limits.max_gb > 0 and _fs_used(store) > limits.max_gb * GIB
    trees = inventory.store_trees(store, cache_root=cache_root, sizes=by_size)
    removable = [t for t in trees if not t.locked and t.path.resolve() not in keep_set]
    removable.sort(key=lambda t: t.last_built)  # least recently built first
    removed: list[dict[str, Any]] = []
    gone: set[Path] = set()

    if limits.max_trees > 0:
        by_builder: dict[str, int] = {}
        for t in trees:
            by_builder[t.builder] = by_builder.get(t.builder, 0) + 1
        for t in removable:
            if by_builder[t.builder] <= limits.max_trees:
                continue
            reason = (f"builder {t.builder} has {by_builder[t.builder]} trees, "
                      f"more than max_trees = {limits.max_trees}")
            record = _remove(store, t, cache_root, reason)
            if record is not None:
                removed.append(record)
                gone.add(t.path)
                by_builder[t.builder] -= 1

    if by_size:
        total = sum(t.size or 0 for t in trees if t.path not in gone)
        budget = limits.max_gb * GIB
        for t in removable:
            if total <= budget:
                break
            if t.path in gone:
                continue
            reason = (f"the tree store holds {total / GIB:.2f} GiB, more than "
                      f"max_gb = {limits.max_gb:g}")
            record = _remove(store, t, cache_root, reason)
            if record is not None:
                removed.append(record)
                gone.add(t.path)
                total -= t.size or 0
    return removed
