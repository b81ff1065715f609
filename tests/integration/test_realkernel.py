"""A real kernel: Debian's linux-source-6.12, tinyconfig + ktstr.kconfig, through the service and `ktstr-ci kernel build`.

One full build per run (minutes on 2 cores), through the service: the
committed tree is pushed and built by a real master and worker. The
command-line builds then run in a copy of that built tree (build outputs and
times kept, its tools' records moved to the copy's path, as a seeded tree
is), so each is an incremental make: first while the copy is not under git
(it must come out ``non-git-not-cached``), then committed — stored — and a
third run is a cache hit. ``make test FAST=1`` deselects this module (marker
``realkernel``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.realkernel import commit_one_file_change, extract_linux_source, git_commit_all

pytestmark = pytest.mark.realkernel

# metadata.json fields ktstr reads; all must be present.
KTSTR_FIELDS = {
    "version",
    "source",
    "arch",
    "image_name",
    "config_hash",
    "built_at",
    "ktstr_kconfig_hash",
    "has_vmlinux",
    "vmlinux_stripped",
    "source_vmlinux_size",
    "source_vmlinux_mtime_secs",
    "extra_kconfig_hash",
}


def build(tree: Path, cache: Path) -> tuple[int, dict, str, float]:
    env = {**os.environ, "KTSTR_CACHE_DIR": str(cache)}
    start = time.monotonic()
    p = subprocess.run(
        # All CPUs: without a cap ktstr reserves 30% of them (-j1 here).
        ["ktstr-ci", "kernel", "build", "--source", str(tree), "--profile", "tiny",
         "--cpu-cap", str(len(os.sched_getaffinity(0))), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
        stdin=subprocess.DEVNULL,
    )
    return p.returncode, json.loads(p.stdout or "{}"), p.stderr, time.monotonic() - start


def sections(path: Path) -> dict[str, str]:
    """section name → type, from readelf -SW."""
    out = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True, check=True).stdout
    found: dict[str, str] = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("[") and "]" in line:
            fields = line.split("]", 1)[1].split()
            if len(fields) >= 2:
                found[fields[0]] = fields[1]
    return found


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The committed 6.12 tree pushed to a real service and built in full; the kit stays up."""
    from tests.support.servicekit import ServiceKit

    base = tmp_path_factory.mktemp("rk-source")
    times: dict[str, float] = {}
    start = time.monotonic()
    tree = extract_linux_source(base)
    times["extract"] = time.monotonic() - start
    git_commit_all(tree)
    times["commit"] = time.monotonic() - start - times["extract"]
    with ServiceKit(tmp_path_factory.mktemp("rk-service"), profiles=("tiny",)) as kit:
        start = time.monotonic()
        push = kit.push(tree, "linux-6.12")
        times["push"] = time.monotonic() - start
        build = kit.wait_build("linux-6.12", timeout=60)
        done = kit.wait_finished(build["buildid"], timeout=2400)
        times["service build"] = time.monotonic() - start - times["push"]
        props = kit.build_properties(done["buildid"])
        print(f"\nreal kernel through the service, make -j{props.get('make_jobs')}; seconds: "
              + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
        yield {"kit": kit, "tree": tree, "push": push, "done": done, "props": props}


@pytest.fixture(scope="module")
def real_builds(service: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from ktstr_steps.treestore.relocate import relocate_build_records
    from ktstr_steps.treestore.seed import copy_worktree

    built = Path(service["props"]["source_tree"])
    base = tmp_path_factory.mktemp("realkernel")
    cache = base / "kcache"
    tree = base / "linux"
    tree.mkdir()
    start = time.monotonic()
    copy_worktree(built, tree, share_sources=True)  # all but .git, times kept
    relocate_build_records(tree, built)
    print(f"\ncopy of the built tree: {time.monotonic() - start:.0f}s")
    results: dict = {"tree": tree, "cache": cache}
    results["nongit"] = build(tree, cache)
    results["entries_after_nongit"] = sorted(
        p.name for p in cache.glob("*") if not p.name.startswith(".")
    )
    git_commit_all(tree)
    results["git"] = build(tree, cache)
    results["hit"] = build(tree, cache)
    timings = {k: round(results[k][3], 1) for k in ("nongit", "git", "hit")}
    print(f"\nreal-kernel command-line timings (s): {timings}")
    (base / "timings.json").write_text(json.dumps(timings))
    return results


def test_untracked_real_tree_is_built_but_not_cached(real_builds):
    rc, res, err, _ = real_builds["nongit"]
    assert rc == 0, err[-4000:]
    assert res["outcome"] == "non-git-not-cached"
    assert Path(res["image_path"]).is_file()
    assert real_builds["entries_after_nongit"] == []


def test_committed_real_tree_is_cached_with_every_ktstr_field(real_builds):
    rc, res, err, _ = real_builds["git"]
    assert rc == 0, err[-4000:]
    assert res["outcome"] == "cached"
    entry = Path(res["entry_dir"])
    meta = json.loads((entry / "metadata.json").read_text())
    assert KTSTR_FIELDS <= set(meta)
    assert meta["arch"] == "x86_64" and meta["image_name"] == "bzImage"
    assert meta["source"]["type"] == "local" and len(meta["source"]["git_hash"]) == 7
    assert meta["has_vmlinux"] is True and meta["vmlinux_stripped"] is True
    assert (entry / "bzImage").stat().st_size > 100_000
    config = (real_builds["tree"] / ".config").read_text().splitlines()
    for opt in ("CONFIG_64BIT=y", "CONFIG_SCHED_CLASS_EXT=y", "CONFIG_DEBUG_INFO_BTF=y"):
        assert opt in config


def test_cached_vmlinux_is_stripped_but_keeps_btf_and_symtab(real_builds):
    entry = Path(real_builds["git"][1]["entry_dir"])
    stripped, raw = entry / "vmlinux", real_builds["tree"] / "vmlinux"
    secs = sections(stripped)
    assert ".BTF" in secs and ".symtab" in secs and ".strtab" in secs
    assert secs[".text"] == "NOBITS"
    assert not [s for s in secs if s.startswith(".debug_")]
    assert stripped.stat().st_size < raw.stat().st_size / 2


def test_third_run_is_a_cache_hit(real_builds):
    rc, res, err, seconds = real_builds["hit"]
    assert rc == 0, err[-2000:]
    assert res["outcome"] == "cache-hit"
    assert res["entry_dir"] == real_builds["git"][1]["entry_dir"]
    assert "make" not in res["phases"]


def test_real_kernel_through_the_service(service: dict):
    """git push of the committed 6.12 tree to the real service → tiny kernel built and cached."""
    from master.records import db as records_db
    from master.records import queries

    kit, done, props = service["kit"], service["done"], service["props"]
    steps = {s["name"]: s for s in kit.build_steps(done["buildid"])}
    assert done["results"] == kit.SUCCESS, {n: s["state_string"] for n, s in steps.items()}
    assert props["kernel_outcome"] == "cached"
    entry = kit.cache_dir / props["cache_key"]
    assert (entry / "bzImage").stat().st_size > 100_000
    secs = sections(entry / "vmlinux")
    assert ".BTF" in secs and ".symtab" in secs and secs[".text"] == "NOBITS"
    meta = json.loads((entry / "metadata.json").read_text())
    assert meta["vmlinux_stripped"] is True and meta["source"]["git_hash"] == service["push"].sha[:7]
    engine = records_db.make_engine(kit.settings.databases.records, must_exist=True)
    rows = [r for r in queries.recent_builds(engine, limit=50) if r["buildid"] == done["buildid"]]
    engine.dispose()
    assert len(rows) == 1 and rows[0]["kernel_outcome"] == "cached"
    assert rows[0]["cache_key"] == props["cache_key"] and rows[0]["make_jobs"] == props["make_jobs"]


def test_topic_branch_compiles_only_its_change(service: dict):
    """A topic branch = the built commit + one changed .c file: its tree is seeded from the
    built one, and make compiles that file (and the version objects), not the kernel.
    The copy's objtool records name the copy, else objtool and all it checks rebuild."""
    kit, tree = service["kit"], service["tree"]
    topic = commit_one_file_change(tree, "kernel/sched/core.c", "topic")
    kit.git(tree, "push", str(kit.repo_path), f"{topic}:refs/heads/topic")
    build = kit.wait_build("topic", timeout=60)
    done = kit.wait_finished(build["buildid"], timeout=2400)
    steps = {s["name"]: s for s in kit.build_steps(done["buildid"])}
    assert done["results"] == kit.SUCCESS, {n: s["state_string"] for n, s in steps.items()}
    assert steps["checkout"]["state_string"].startswith("seeded from linux-6.12"), steps
    props = kit.build_properties(done["buildid"])
    assert props["kernel_outcome"] == "cached" and props["got_revision"] == topic
    compiled = re.findall(r"^\s*CC\s+(\S+\.o)$", kit.step_log(done["buildid"], "make"), re.M)
    kernel_objects = [o for o in compiled if not o.startswith(("init/version", "arch/x86/boot"))]
    assert kernel_objects == ["kernel/sched/core.o"], compiled
    tree_log = kit.step_log(done["buildid"], "checkout", "tree")
    assert "of its tools (objtool...) rewritten to this path" in tree_log, tree_log
