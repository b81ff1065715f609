"""Bounded tree store: past its limits the least recently built trees go, a locked one never.

Trees here are real git trees with stamps and real files (sizes are what ``du``
counts); "locked" is a real flock on the tree's source lock, as a build holds it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ktstr_steps.buildsteps.base import branch_dir
from ktstr_steps.treestore import inventory
from ktstr_steps.treestore.prune import GIB, Limits, prune_store
from launcher.cli import main as cli_main

MIB = 1024**2


def make_tree(store: Path, builder: str, branch: str, last_built: float, mib: int = 1) -> Path:
    tree = store / builder / branch_dir(branch)
    tree.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    # Incompressible, really allocated bytes: the size limit counts blocks.
    (tree / "vmlinux").write_bytes(os.urandom(mib * MIB))
    inventory.write_stamp(tree, builder=builder, branch=branch, last_built=last_built)
    return tree


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "trees"


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def names(store: Path) -> set[str]:
    return {f"{t.builder}/{t.branch}" for t in inventory.store_trees(store)}


def test_max_trees_removes_least_recently_built_and_spares_the_locked(store: Path, cache: Path,
                                                                      capfd) -> None:
    for i, branch in enumerate(["a", "b", "c", "d", "e"]):
        make_tree(store, "kernel", branch, last_built=100.0 + i)
    make_tree(store, "other", "a", last_built=1.0)  # another builder: its own count
    locked = inventory.try_lock(store / "kernel" / branch_dir("a"), cache, exclusive=True)
    assert locked is not None
    try:
        removed = prune_store(store, Limits(max_trees=2), cache)
    finally:
        locked.release()
    # a (oldest) is being built, and counts: b, c, d go; a and the newest stay.
    assert [r["branch"] for r in removed] == ["b", "c", "d"]
    assert names(store) == {"kernel/a", "kernel/e", "other/a"}
    err = capfd.readouterr().err
    assert "removed tree trees/kernel/b (last built" in err
    assert "builder kernel has 5 trees, more than max_trees = 2" in err
    assert not [p for p in (store / "kernel").iterdir() if p.name.startswith(".")]
    logged = inventory.removals(store)
    assert [r["branch"] for r in logged] == ["b", "c", "d"] and all(r["removed_at"] for r in logged)


def test_max_gb_removes_oldest_until_under_and_keeps_the_current_tree(store: Path, cache: Path) -> None:
    trees = [make_tree(store, "kernel", b, last_built=float(i), mib=4)
             for i, b in enumerate(["old", "mid", "new", "newest"])]
    # 16 MiB held; the limit is 9 MiB; "old" is the tree this build uses.
    removed = prune_store(store, Limits(max_gb=9 * MIB / GIB), cache, keep=(trees[0],))
    assert [r["branch"] for r in removed] == ["mid", "new"]
    assert names(store) == {"kernel/old", "kernel/newest"}
    assert all(r["size"] >= 4 * MIB for r in removed)


def test_release_trees_and_stale_work_dirs(store: Path, cache: Path) -> None:
    for i in range(3):
        tree = store / "tarballs" / f"tarball-6.12.{i}-x86_64-kc00000000"
        tree.mkdir(parents=True)
        (tree / "Makefile").write_text("all:\n")
        os.utime(tree, (100 + i, 100 + i))
    dead = store / "kernel" / ".x.seeding-999999999"
    dead.mkdir(parents=True)
    removed = prune_store(store, Limits(max_trees=1), cache)
    assert [Path(r["path"]).name for r in removed] == [
        "tarball-6.12.0-x86_64-kc00000000", "tarball-6.12.1-x86_64-kc00000000"]
    # A tree half-made by a process that died is swept by the same pass.
    assert not dead.exists()


def test_no_limits_remove_nothing(store: Path, cache: Path) -> None:
    make_tree(store, "kernel", "a", last_built=1.0)
    assert prune_store(store, Limits(), cache) == []


def test_trees_command_lists_and_prunes(store: Path, cache: Path, capsys,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTSTR_CACHE_DIR", str(cache))
    make_tree(store, "kernel", "main", last_built=200.0)
    make_tree(store, "kernel", "topic/x", last_built=100.0)
    lock = inventory.try_lock(store / "kernel" / branch_dir("main"), cache, exclusive=True)
    try:
        assert cli_main(["trees", "--store", str(store), "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert cli_main(["trees", "--store", str(store)]) == 0
        text = capsys.readouterr().out
    finally:
        lock.release()
    by_branch = {t["branch"]: t for t in listed["trees"]}
    assert set(by_branch) == {"main", "topic/x"}
    assert by_branch["main"]["locked"] and not by_branch["topic/x"]["locked"]
    assert by_branch["main"]["size"] >= MIB and by_branch["main"]["builder"] == "kernel"
    assert {"commit", "last_built", "last_built_text", "path"} <= set(by_branch["main"])
    assert text.splitlines()[0].split() == ["BUILDER", "BRANCH", "COMMIT", "SIZE", "LAST",
                                            "BUILT", "LOCKED"]
    assert any(line.startswith("kernel") and "main" in line and line.endswith("yes")
               for line in text.splitlines())
    assert cli_main(["trees", "prune", "--store", str(store), "--max-trees", "1", "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert [r["branch"] for r in pruned["removed"]] == ["topic/x"]
    assert cli_main(["trees", "--store", str(store), "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert [t["branch"] for t in after["trees"]] == ["main"]
    assert [r["branch"] for r in after["removed"]] == ["topic/x"]


def test_prune_without_limits_is_a_usage_error(store: Path, capsys) -> None:
    assert cli_main(["trees", "prune", "--store", str(store)]) == 1
    assert "trees prune needs --max-trees N and/or --max-gb GIB" in capsys.readouterr().err


def test_removal_log_keeps_the_newest(tmp_path: Path) -> None:
    log = tmp_path / "removed.log"
    for i in range(25):
        inventory.append_capped(log, {"n": i, "pad": "x" * 300}, keep=5)
    kept = [json.loads(line)["n"] for line in log.read_text().splitlines()]
    assert kept[-1] == 24 and len(kept) <= 10 and kept == sorted(kept)
