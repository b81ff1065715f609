#!/usr/bin/env python3
"""Benchmark: a new branch's tree seeded from a built one, on the real 6.12 source.

Without the service (the pipeline's ``prepare_tree`` and git, as the checkout
step runs them), on Debian's linux-source-6.12:

1. ``main`` is prepared (fresh tree borrowing the mirror) and checked out;
   with ``--build`` it is configured (tinyconfig) and built with ``make -j2``;
2. ``topic`` = main + one changed ``.c`` file: prepared (seeded from main) and
   checked out; figures: seconds to seed (copy + index refresh), the topic
   tree's own git objects (KiB), and with ``--build`` the topic's make seconds
   and compiled objects, ÷ the plain incremental make of the same change in
   main's tree (the issue's "≤ 1.5" ratio, without the service's own steps).

Usage: ``.venv/bin/python bench/seed_bench.py [--build] [--work DIR] [--json]``.
Prints numbers; no assertion (tests/test_treestore_*.py assert behaviour).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ktstr_steps.buildsteps.base import branch_dir  # noqa: E402
from ktstr_steps.treestore.inventory import disk_usage  # noqa: E402
from ktstr_steps.treestore.prepare import prepare_tree  # noqa: E402
from ktstr_steps.treestore.prune import Limits  # noqa: E402
from tests.support.fakekernel import GIT_ENV  # noqa: E402
from tests.support.realkernel import extract_linux_source, git_commit_all  # noqa: E402

ONE_FILE = "kernel/sched/core.c"
ENV = {**os.environ, **GIT_ENV}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=ENV, check=True, capture_output=True,
                          text=True).stdout.strip()


def make(tree: Path, *args: str) -> tuple[float, set[str]]:
    t0 = time.monotonic()
    p = subprocess.run(["make", "-j2", *args], cwd=tree, check=True, capture_output=True, text=True)
    return time.monotonic() - t0, set(re.findall(r"^\s*CC\s+(\S+\.o)$", p.stdout, re.M))


def change(tree: Path, n: int) -> None:
    path = tree / ONE_FILE
    path.write_text(path.read_text() + f"\n/* seed bench {n} */\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", action="store_true", help="build main first (tinyconfig, minutes)")
    ap.add_argument("--work", type=Path, help="keep the trees here")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="seed-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    fig: dict[str, float] = {}
    print(f"seed bench: extracting linux-source-6.12 into {work}", file=sys.stderr)
    src = extract_linux_source(work)
    git_commit_all(src)
    # The source repository itself is the URL (a push to a bare one would pack
    # the history once more and measure nothing of interest).
    repo = src
    git(src, "branch", "-M", "main")
    base = git(src, "rev-parse", "HEAD")
    store, cache = work / "trees", work / "cache"

    def prepare(branch: str, rev: str) -> dict:
        return prepare_tree(store / "linux-tiny" / branch_dir(branch), repourl=str(repo),
                            branch=branch, revision=rev, cache_root=cache, limits=Limits())

    def checkout(branch: str, rev: str) -> Path:
        tree = store / "linux-tiny" / branch_dir(branch)
        git(tree, "checkout", "-q", "-f", rev)
        git(tree, "checkout", "-q", "-B", branch)
        return tree

    t0 = time.monotonic()
    prepare("main", base)
    fig["main_prepare_s"] = time.monotonic() - t0  # the first fetch of the history
    t0 = time.monotonic()
    main_tree = checkout("main", base)
    fig["main_checkout_s"] = time.monotonic() - t0
    if args.build:
        subprocess.run(["make", "-s", "tinyconfig"], cwd=main_tree, check=True)
        fig["main_full_make_s"], _ = make(main_tree)
    fig["main_tree_gib"] = disk_usage(main_tree) / 1024**3

    git(src, "checkout", "-q", "-b", "topic")
    change(src, 1)
    git(src, "commit", "-qam", "topic: one file")
    topic = git(src, "rev-parse", "HEAD")
    t0 = time.monotonic()
    answer = prepare("topic", topic)
    fig["topic_prepare_s"] = time.monotonic() - t0
    t0 = time.monotonic()
    topic_tree = checkout("topic", topic)
    fig["topic_checkout_s"] = time.monotonic() - t0
    counts = dict(line.split(": ") for line in git(topic_tree, "count-objects", "-v").splitlines())
    fig["topic_git_own_kib"] = float(counts["size"]) + float(counts["size-pack"])
    fig["topic_git_dir_mib"] = disk_usage(topic_tree / ".git") / 1024**2
    print(f"seed bench: topic {answer['action']} from {(answer['seed'] or {}).get('path')}",
          file=sys.stderr)
    if args.build:
        fig["topic_make_s"], objs = make(topic_tree)
        fig["topic_objects_compiled"] = float(len(objs))
        # The same change as a plain incremental make in main's tree.
        change(main_tree, 1)
        fig["plain_incremental_make_s"], _ = make(main_tree)
        seeded = fig["topic_prepare_s"] + fig["topic_checkout_s"] + fig["topic_make_s"]
        fig["seeded_branch_over_plain_incremental"] = seeded / fig["plain_incremental_make_s"]
    for k, v in fig.items():
        print(f"{k:40s} {v:10.2f}")
    if args.json:
        print(json.dumps(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
