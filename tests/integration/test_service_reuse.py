"""A commit built once is never built again: the same commit on a new branch is a cache hit
found before any checkout (real master, real worker, fake kernel tree)."""

from __future__ import annotations

from pathlib import Path

import pytest

from master.records import db as records_db
from master.records import queries
from tests.support.fakekernel import tree_files
from tests.support.servicekit import ServiceKit

TREE_STEPS = ("reserve", "source-lock", "checkout", "cache-lookup")
KERNEL_STEPS = ("configure", "make", "validate", "compile-commands", "cache-store")


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory):
    with ServiceKit(tmp_path_factory.mktemp("reuse"), profiles=("tiny",)) as k:
        yield k


def build_of(kit: ServiceKit, branch: str, after: int = 0) -> dict:
    started = kit.wait_build(branch, after_buildid=after, timeout=30)
    build = kit.wait_finished(started["buildid"], timeout=300)
    assert build["results"] == kit.SUCCESS, kit.build_steps(build["buildid"])
    return build


def record_row(kit: ServiceKit, buildid: int) -> dict:
    engine = records_db.make_engine(kit.settings.databases.records, must_exist=True)
    try:
        rows = [r for r in queries.recent_builds(engine, limit=500) if r["buildid"] == buildid]
    finally:
        engine.dispose()
    assert len(rows) == 1
    return rows[0]


def test_second_build_of_a_branch_is_found_from_a_new_branch_without_checkout(kit: ServiceKit):
    tree: Path = kit.make_tree(tree_files(), path=kit.root / "src" / "a")
    kit.push(tree, "reuse-a")
    first = build_of(kit, "reuse-a")
    # The branch's second build: its tree now holds the first build's .config.
    sha = kit.commit(tree, {"README": "second commit\n"})
    kit.push(tree, "reuse-a")
    second = build_of(kit, "reuse-a", after=first["buildid"])
    built = kit.build_properties(second["buildid"])
    assert built["kernel_outcome"] == "cached"
    assert built["cache_key"].startswith(f"local-{sha[:7]}-x86_64-kc")
    assert "-cfg" not in built["cache_key"]
    # Same profile, same .config, no Kconfig change since the first build: no configure.
    configure = {s["name"]: s for s in kit.build_steps(second["buildid"])}["configure"]
    assert configure["state_string"] == "unchanged inputs, skipped"
    assert "configure: unchanged inputs, skipped" in kit.step_log(second["buildid"], "configure")

    push = kit.push(tree, "reuse-b")
    assert push.sha == sha
    hit = build_of(kit, "reuse-b")
    props = kit.build_properties(hit["buildid"])
    assert props["kernel_outcome"] == "cache-hit"
    assert props["cache_key"] == built["cache_key"]
    steps = {s["name"]: s for s in kit.build_steps(hit["buildid"])}
    lookup = steps["revision-lookup"]
    assert lookup["results"] == kit.SUCCESS
    assert lookup["state_string"].startswith(f"cache hit {built['cache_key']}")
    assert f"cache key: {built['cache_key']}" in kit.step_log(hit["buildid"], "revision-lookup")
    for name in (*TREE_STEPS, *KERNEL_STEPS, "release"):
        assert steps[name]["results"] == kit.SKIPPED, (name, steps[name]["state_string"])
    assert not any(p.name.startswith("reuse-b") for p in kit.tree_store.rglob("reuse-b*"))
    row = record_row(kit, hit["buildid"])
    assert row["kernel_outcome"] == "cache-hit" and row["cache_key"] == built["cache_key"]
    assert row["branch"] == "reuse-b" and row["revision"] == sha
