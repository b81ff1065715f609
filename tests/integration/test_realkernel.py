"""A real kernel: Debian's linux-source-6.12, tinyconfig + ktstr.kconfig, through `ktstr-ci kernel build`.

One full build per run (minutes on 2 cores): the tree is built first while it
is not under git (it must come out ``non-git-not-cached``), then committed and
built again — an incremental make — which is stored; a third run is a cache
hit. ``make test FAST=1`` deselects this module (marker ``realkernel``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
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
def real_builds(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("realkernel")
    cache = base / "kcache"
    tree = extract_linux_source(base)
    results: dict = {"tree": tree, "cache": cache}
    results["nongit"] = build(tree, cache)
    results["entries_after_nongit"] = sorted(
        p.name for p in cache.glob("*") if not p.name.startswith(".")
    )
    git_commit_all(tree)
    results["git"] = build(tree, cache)
    results["hit"] = build(tree, cache)
    timings = {k: round(results[k][3], 1) for k in ("nongit", "git", "hit")}
    print(f"\nreal-kernel timings (s): {timings}")
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


def test_real_kernel_through_the_service(real_builds, tmp_path_factory: pytest.TempPathFactory):
    """git push of the committed 6.12 tree to the real service → tiny kernel built and cached."""
    from master.records import db as records_db
    from master.records import queries
    from tests.support.servicekit import ServiceKit

    root = tmp_path_factory.mktemp("rk-service")
    with ServiceKit(root, profiles=("tiny",)) as kit:
        push = kit.push(real_builds["tree"], "linux-6.12")
        start = time.monotonic()
        build = kit.wait_build("linux-6.12", timeout=60)
        done = kit.wait_finished(build["buildid"], timeout=2400)
        seconds = time.monotonic() - start
        steps = {s["name"]: s for s in kit.build_steps(done["buildid"])}
        assert done["results"] == kit.SUCCESS, {n: s["state_string"] for n, s in steps.items()}
        props = kit.build_properties(done["buildid"])
        assert props["kernel_outcome"] == "cached"
        entry = kit.cache_dir / props["cache_key"]
        assert (entry / "bzImage").stat().st_size > 100_000
        secs = sections(entry / "vmlinux")
        assert ".BTF" in secs and ".symtab" in secs and secs[".text"] == "NOBITS"
        meta = json.loads((entry / "metadata.json").read_text())
        assert meta["vmlinux_stripped"] is True and meta["source"]["git_hash"] == push.sha[:7]
        engine = records_db.make_engine(kit.settings.databases.records, must_exist=True)
        rows = [r for r in queries.recent_builds(engine, limit=50) if r["buildid"] == done["buildid"]]
        engine.dispose()
        assert len(rows) == 1 and rows[0]["kernel_outcome"] == "cached"
        assert rows[0]["cache_key"] == props["cache_key"] and rows[0]["make_jobs"] == props["make_jobs"]
        print(f"\nreal kernel through the service: {seconds:.0f}s, make -j{props['make_jobs']}")

        # A topic branch = that commit + one changed .c file: its tree is seeded from the
        # built one, and make compiles that file (and the version objects), not the kernel.
        # The copy's objtool records name the copy, else objtool and all it checks rebuild.
        topic = commit_one_file_change(real_builds["tree"], "kernel/sched/core.c", "topic")
        kit.git(real_builds["tree"], "push", str(kit.repo_path), f"{topic}:refs/heads/topic")
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
