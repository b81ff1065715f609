"""A new branch's tree starts as a copy of the builder's nearest built tree.

When a builder has no tree for a branch yet, the tree is seeded from another
tree of the same builder (same config profile, so its objects and ``.config``
fit): the one whose commit is nearest to the new commit by ``git merge-base``
— fewest commits from the merge-base to the new commit, then fewest from the
merge-base to the seed's own commit (less to undo), then the most recently
built; a tree that was never configured (no ``.config``) holds nothing to
reuse and is no seed. The copy keeps modification times (``cp -a
--reflink=auto``), so once the checkout rewrites the files that differ, make
rebuilds only what they feed. No tree with common history → a fresh, empty
tree (a full build). Where the filesystem cannot clone files (reflink), the
files git tracks are hard-linked rather than copied (:func:`copy_worktree`);
the build outputs are copied either way.

A seed is read under a shared hold of its source-tree lock: a tree that a
build holds (building) is skipped, and a build of the seed's branch waits
for the copy to finish. The copy gets no objects of its own: its
``.git/objects`` borrows from the host's mirror (:mod:`.mirror`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ktstr_steps.errors import KtstrError
from ktstr_steps.flock import FileLock
from ktstr_steps.source import git_ok, run_git
from ktstr_steps.treestore import inventory
from ktstr_steps.treestore.inventory import Tree
from ktstr_steps.treestore.mirror import adopt_commit, borrow_objects
from ktstr_steps.treestore.relocate import relocate_build_records

# What of a seed's .git a copy keeps: its config (and info/exclude). HEAD is
# written as the seed's commit; refs, reflogs, hooks and objects stay behind.
_GIT_KEEP = ("config", "info", "description")
# Buildbot's marker of a tree with a try patch applied: its checkout would
# `git clean -x` the copy (every build output gone); the copy's read-tree and
# refresh already make the checkout overwrite the patched files.
_TOP_SKIP = (".git", ".buildbot-patched")


@dataclass
class Candidate:
    tree: Tree
    merge_base: str
    ahead: int  # commits from the merge-base to the new commit
    behind: int  # commits from the merge-base to the candidate's commit
    copy: str | None = None  # how its files were copied, once chosen
    relocated: int = 0  # build records rewritten to name the copy

    def rank(self) -> tuple[int, int, float]:
        return (self.ahead, self.behind, -self.tree.last_built)

    def why(self) -> str:
        if self.behind == 0 and self.ahead == 0:
            return "same commit"
        if self.behind == 0:
            return f"ancestor of the new commit, {self.ahead} commit{'s' * (self.ahead != 1)} behind"
        return (f"merge-base {self.merge_base[:7]} is {self.ahead} commit"
                f"{'s' * (self.ahead != 1)} behind the new commit")

    def to_json(self) -> dict[str, Any]:
        return {**self.tree.to_json(), "merge_base": self.merge_base, "ahead": self.ahead,
                "behind": self.behind, "why": self.why(), "copy": self.copy,
                "relocated": self.relocated}


def _count(mirror: Path, spec: str) -> int | None:
    r = run_git(["rev-list", "--count", spec], cwd=mirror, timeout=600)
    try:
        return int(r.stdout.strip()) if r.returncode == 0 else None
    except ValueError:
        return None


def rank_candidates(mirror: Path, new_commit: str, trees: list[Tree]) -> tuple[list[Candidate], list[dict]]:
    """Candidates nearest first, and ``{"path", "reason"}`` for every tree left out."""
    ranked, skipped = [], []
    for tree in trees:
        if not tree.commit:
            skipped.append({"path": str(tree.path), "reason": "no commit checked out"})
            continue
        if not (tree.path / ".config").is_file():
            # Nothing built to reuse: copying it would only cost the copy.
            skipped.append({"path": str(tree.path), "reason": "never built (no .config)"})
            continue
        if not adopt_commit(mirror, tree.path, tree.commit):
            skipped.append({"path": str(tree.path), "reason": f"commit {tree.commit[:7]} unreadable"})
            continue
        r = run_git(["merge-base", new_commit, tree.commit], cwd=mirror, timeout=600)
        base = r.stdout.strip()
        if r.returncode != 0 or not base:
            skipped.append({"path": str(tree.path), "reason": "no common history"})
            continue
        ahead = _count(mirror, f"{base}..{new_commit}")
        behind = _count(mirror, f"{base}..{tree.commit}")
        if ahead is None or behind is None:
            skipped.append({"path": str(tree.path), "reason": "git rev-list failed"})
            continue
        ranked.append(Candidate(tree, base, ahead, behind))
    ranked.sort(key=Candidate.rank)
    return ranked, skipped


def _cp(sources: list[Path] | list[str], dest: Path, *, link: bool = False,
        cwd: Path | None = None) -> None:
    if not sources:
        return
    how = ["-l"] if link else ["--reflink=auto", "--remove-destination"]
    parents = ["--parents"] if cwd is not None else []
    argv = ["cp", "-a", *how, *parents, "-t", str(dest), "--", *map(str, sources)]
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, errors="replace",
                       check=False, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise KtstrError(f"copying {cwd or Path(sources[0]).parent} to {dest} failed: "
                         f"{r.stderr.strip()[-500:]}", kind="tree-store")


def _clones_files(seed: Path, dest: Path) -> bool:
    """Whether this filesystem clones files (reflink): then a full copy shares the data."""
    probe = dest / ".ktstr-ci-reflink-probe"
    r = subprocess.run(["cp", "--reflink=always", "--", str(seed / "Makefile"), str(probe)],
                       capture_output=True, check=False, stdin=subprocess.DEVNULL)
    probe.unlink(missing_ok=True)
    return r.returncode == 0


def copy_worktree(seed: Path, dest: Path, *, share_sources: bool) -> str:
    """Copy the seed's files into ``dest`` (times kept); how: ``"copy"`` or ``"linked-sources"``.

    ``share_sources`` hard-links the files git tracks and copies the rest (the
    build outputs, ``.config``): on a filesystem that cannot clone files, the
    sources are most of a tree's bytes and copying them costs as long as a
    checkout. Safe because nothing writes a tracked file in place: git replaces
    a file it changes with a new one (checkout, apply, a mode change alike),
    the build writes only untracked files, and those are real copies.
    """
    entries = [p for p in sorted(seed.iterdir()) if p.name not in _TOP_SKIP]
    if not share_sources:
        _cp(entries, dest)
        return "copy"
    _cp(entries, dest, link=True)
    r = run_git(["ls-files", "-z", "--others"], cwd=seed, timeout=3600)
    if r.returncode != 0:
        raise KtstrError(f"git ls-files in {seed} failed: {r.stderr.strip()[-500:]}",
                         kind="git-failed")
    others = [f for f in r.stdout.split("\0") if f and f.rstrip("/") not in _TOP_SKIP]
    for i in range(0, len(others), 500):
        _cp(others[i:i + 500], dest, cwd=seed)  # replaces the links by copies
    return "linked-sources"


def copy_tree(seed: Path, commit: str, dest: Path, mirror: Path) -> tuple[str, int]:
    """Copy ``seed``'s files to ``dest`` with times kept; its git objects come from ``mirror``.

    Built under a temporary name and renamed into place, so a failed copy leaves
    nothing at ``dest``. The copy compares files by size and whole-second mtime
    only (``core.checkStat=minimal``, ``core.trustCtime=false``): its inodes and
    ctimes are all new, and by git's default rules every file would look
    changed, be hashed again (as long as the copy itself on a 6.12 tree) and
    then be rewritten by the checkout, new mtime and all. Only git and the
    build write these trees, so size and mtime are enough. A seed whose tree
    had a try patch applied gets a fresh index from ``commit`` instead (its
    index names blobs that only the seed has), and a full copy. The copy's build
    records are rewritten to name ``dest`` (:mod:`.relocate`). Returns how the
    files were copied (:func:`copy_worktree`) and how many records were rewritten.
    """
    tmp = dest.with_name(f".{dest.name}.seeding-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        patched = (seed / ".buildbot-patched").exists()
        share = not patched and (seed / ".git" / "index").is_file() \
            and not _clones_files(seed, tmp)
        mode = copy_worktree(seed, tmp, share_sources=share)
        relocated = relocate_build_records(tmp, seed, dest)
        git_dir = tmp / ".git"
        git_dir.mkdir()
        keep = _GIT_KEEP if patched else (*_GIT_KEEP, "index")
        _cp([seed / ".git" / n for n in keep if (seed / ".git" / n).exists()], git_dir)
        for sub in ("objects/pack", "objects/info", "refs/heads", "refs/tags"):
            (git_dir / sub).mkdir(parents=True, exist_ok=True)
        (git_dir / "HEAD").write_text(commit + "\n")
        borrow_objects(git_dir, mirror)
        for key, value in (("core.checkStat", "minimal"), ("core.trustCtime", "false")):
            git_ok(["config", key, value], tmp, f"git config {key}")
        if patched or not (git_dir / "index").is_file():
            git_ok(["read-tree", commit], tmp, "git read-tree")
        # Exit status 1 only says some files differ from the commit: expected for a
        # seed whose tree was patched; the checkout overwrites those.
        run_git(["update-index", "-q", "--refresh"], cwd=tmp, timeout=3600)
        if patched:
            # Files a try patch added would make the next patch's `git apply` refuse;
            # ignored files (the build outputs) stay.
            git_ok(["clean", "-q", "-f", "-d"], tmp, "git clean")
        os.rename(tmp, dest)
        return mode, relocated
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fresh_tree(dest: Path, mirror: Path) -> None:
    """An empty repository at ``dest`` borrowing the mirror's objects (the checkout fills it)."""
    tmp = dest.with_name(f".{dest.name}.fresh-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        git_ok(["init", "--quiet", "--", str(tmp)], tmp, "git init")
        borrow_objects(tmp / ".git", mirror)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def seed_new_tree(dest: Path, new_commit: str, mirror: Path,
                  cache_root: Path) -> tuple[Candidate | None, list[dict]]:
    """Create ``dest`` from the nearest unlocked sibling tree; ``(seed or None, skipped)``.

    Every sibling that is not being built is held shared while the candidates
    are compared; all but the chosen one are let go before the copy.
    """
    held: dict[Path, FileLock] = {}
    skipped: list[dict] = []
    try:
        trees = []
        for tree in inventory.builder_trees(dest.parent):
            if tree.path == dest:
                continue
            lock = inventory.try_lock(tree.path, cache_root, exclusive=False)
            if lock is None:
                skipped.append({"path": str(tree.path), "reason": "locked by a build"})
                continue
            held[tree.path] = lock
            trees.append(tree)
        ranked, not_related = rank_candidates(mirror, new_commit, trees)
        skipped.extend(not_related)
        best = ranked[0] if ranked else None
        for path in [p for p in held if best is None or p != best.tree.path]:
            held.pop(path).release()
        if best is None:
            fresh_tree(dest, mirror)
        else:
            best.copy, best.relocated = copy_tree(best.tree.path, best.tree.commit or "",
                                                  dest, mirror)
        return best, skipped
    finally:
        for lock in held.values():
            lock.release()
