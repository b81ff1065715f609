"""The whole service, real processes on loopback: push a kernel-like tree, watch it build.

One real master (the checkout's own master.cfg and kernel_build_factory) and
two real buildbot-worker processes, one per (faked) LLC group, each pinned to
one CPU of this host. Trees are the fake kernel of tests/support/fakekernel.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from master.records import db as records_db
from master.records import queries
from tests.support.fakekernel import slow_kconfig, tree_files
from tests.support.servicekit import ServiceKit

KERNEL_PROPS = ("cache_key", "kernel_outcome", "llc_cpus", "make_jobs", "config_hash", "image_path")
KERNEL_STEPS = ("configure", "make", "validate", "compile-commands", "cache-store")


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("e2e")
    with ServiceKit(root, llc_groups=[[0], [1]], profiles=("tiny",)) as k:
        yield k


def fake_tree(kit: ServiceKit, name: str, **overrides: str) -> Path:
    files = tree_files()
    files.update(overrides)
    return kit.make_tree(files, path=kit.root / "src" / name)


def steps_by_name(kit: ServiceKit, buildid: int) -> dict[str, dict]:
    return {s["name"]: s for s in kit.build_steps(buildid)}


def record_rows(kit: ServiceKit, buildid: int) -> list[dict]:
    engine = records_db.make_engine(kit.settings.databases.records, must_exist=True)
    try:
        return [r for r in queries.recent_builds(engine, limit=500) if r["buildid"] == buildid]
    finally:
        engine.dispose()


def test_push_builds_every_step_caches_records_and_shows_properties(kit: ServiceKit):
    tree = fake_tree(kit, "one")
    t0 = time.monotonic()
    push = kit.push(tree, "feature-one")
    started = kit.wait_build("feature-one", timeout=30)
    start_latency = time.monotonic() - t0
    build = kit.wait_finished(started["buildid"], timeout=300)
    assert build["results"] == kit.SUCCESS, kit.build_steps(build["buildid"])
    steps = steps_by_name(kit, build["buildid"])
    for name in ("reserve", "source-lock", "checkout", "cache-lookup", *KERNEL_STEPS, "record", "release"):
        assert steps[name]["results"] == kit.SUCCESS, (name, steps[name]["state_string"])
    props = kit.build_properties(build["buildid"])
    for name in KERNEL_PROPS:
        assert props.get(name) not in (None, ""), name
    assert props["kernel_outcome"] == "cached"
    assert props["cache_key"].startswith(f"local-{push.sha[:7]}-x86_64-")
    assert props["cache_key"] in steps["cache-store"]["state_string"]
    entry = kit.cache_dir / props["cache_key"]
    assert (entry / "bzImage").is_file() and (entry / "metadata.json").is_file()
    assert props["make_jobs"] == 1 and len(props["llc_cpus"]) == 1
    rows = record_rows(kit, build["buildid"])
    assert len(rows) == 1
    row = rows[0]
    assert row["branch"] == "feature-one" and row["revision"] == push.sha
    assert row["kernel_outcome"] == "cached" and row["cache_key"] == props["cache_key"]
    assert row["worker"] in kit.worker_names and row["make_s"] is not None
    # REST lists the build with its properties (what the UI and API clients see).
    listed = kit.api("builds", buildid=build["buildid"], property="kernel_outcome")["builds"][0]
    assert listed["properties"]["kernel_outcome"][0] == "cached"
    print(f"\npush -> build started: {start_latency:.2f}s")


def test_same_commit_on_another_branch_is_a_cache_hit_without_make(kit: ServiceKit):
    tree = fake_tree(kit, "two")
    kit.push(tree, "hit-a")
    first = kit.wait_finished(kit.wait_build("hit-a", timeout=30)["buildid"], timeout=300)
    assert first["results"] == kit.SUCCESS
    kit.push(tree, "hit-b")
    second = kit.wait_finished(kit.wait_build("hit-b", timeout=30)["buildid"], timeout=120)
    assert second["results"] == kit.SUCCESS
    props = kit.build_properties(second["buildid"])
    assert props["kernel_outcome"] == "cache-hit"
    assert props["cache_key"] == kit.build_properties(first["buildid"])["cache_key"]
    steps = steps_by_name(kit, second["buildid"])
    assert steps["revision-lookup"]["state_string"].startswith("cache hit")
    for name in ("reserve", "source-lock", "checkout", "cache-lookup", *KERNEL_STEPS):
        assert steps[name]["results"] == kit.SKIPPED, name
    assert record_rows(kit, second["buildid"])[0]["kernel_outcome"] == "cache-hit"


def test_two_branches_build_in_parallel_on_different_llc_workers(kit: ServiceKit):
    slow = slow_kconfig(4)
    a = fake_tree(kit, "par-a", Kconfig=slow, README="a\n")
    b = fake_tree(kit, "par-b", Kconfig=slow, README="b\n")
    kit.push(a, "par-a")
    kit.push(b, "par-b")
    ba = kit.wait_finished(kit.wait_build("par-a", timeout=30)["buildid"], timeout=300)
    bb = kit.wait_finished(kit.wait_build("par-b", timeout=30)["buildid"], timeout=300)
    assert ba["results"] == bb["results"] == kit.SUCCESS
    assert ba["workerid"] != bb["workerid"]
    # They overlapped in time: neither waited for the other.
    assert ba["started_at"] < bb["complete_at"] and bb["started_at"] < ba["complete_at"]
    cpus = {tuple(kit.build_properties(x["buildid"])["llc_cpus"]) for x in (ba, bb)}
    assert len(cpus) == 2, "each build reserved its own LLC group"


def test_stop_mid_make_kills_make_releases_everything_and_records_it(kit: ServiceKit):
    tree = fake_tree(kit, "stop", Kconfig=slow_kconfig(120))
    kit.push(tree, "stop-me")
    build = kit.wait_build("stop-me", timeout=30)
    bid = build["buildid"]
    kit.wait_for(
        lambda: steps_by_name(kit, bid).get("make", {}).get("started_at") is not None
        and _make_sleep_running(),
        timeout=120,
        what="make running its long sleep",
    )
    status, _ = kit.stop_build(bid, "test stop")
    assert status == 200
    done = kit.wait_finished(bid, timeout=120)
    assert done["results"] == kit.CANCELLED
    steps = steps_by_name(kit, bid)
    assert steps["release"]["results"] == kit.SUCCESS and steps["record"]["results"] in (
        kit.SUCCESS,
        kit.WARNINGS,
    )
    kit.wait_for(lambda: not _make_sleep_running(), timeout=30, what="make and its children gone")
    from ktstr_steps import flock

    held = [h for p in Path("/tmp").glob("ktstr-llc-*.lock") for h in flock.holders(p)]
    assert not [h for h in held if "ktstr-kit" in h.cmd or "holder" in h.cmd]
    assert not list(kit.root.glob("**/holders/*.json"))
    assert record_rows(kit, bid)[0]["kernel_outcome"] == "cancelled"


def _make_sleep_running() -> bool:
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] == "sleep" and p.parent() and p.parent().name() == "make":
                return True
        except psutil.Error:
            continue
    return False


# -- bad input --------------------------------------------------------------------


@pytest.mark.parametrize("branch", ["x;rm-rf", "a$(id)", "weird`x`", "p|q&r"])
def test_branch_with_shell_characters_is_refused_at_push(kit: ServiceKit, branch: str):
    tree = fake_tree(kit, "shell")
    before = {b["buildid"] for b in kit.builds()}
    res = kit.push(tree, branch, check=False)
    assert res.returncode != 0
    assert "ktstr-ci" in res.output and "refs/heads/" in res.output
    time.sleep(1)
    assert {b["buildid"] for b in kit.builds()} == before


def test_branch_with_dotdot_is_refused(kit: ServiceKit):
    tree = fake_tree(kit, "dots")
    res = kit.push(tree, "a..b", check=False)
    assert res.returncode != 0


def test_push_without_makefile_fails_the_build_clearly(kit: ServiceKit):
    tree = kit.make_tree({"README": "not a kernel\n"}, path=kit.root / "src" / "nomake")
    kit.push(tree, "no-makefile")
    build = kit.wait_finished(kit.wait_build("no-makefile", timeout=30)["buildid"], timeout=120)
    assert build["results"] == kit.FAILURE
    lookup = steps_by_name(kit, build["buildid"])["cache-lookup"]
    assert "not a kernel source tree" in lookup["state_string"] or "Makefile" in lookup["state_string"]
    assert steps_by_name(kit, build["buildid"])["release"]["results"] == kit.SUCCESS


def test_force_with_unknown_profile_or_bad_branch_is_refused(kit: ServiceKit):
    builder = "linux-tiny"
    assert builder in {b["name"] for b in kit.api("builders")["builders"]}
    before = {b["buildid"] for b in kit.builds()}
    status, body = kit.force(builder, "main", profile="nosuch")
    assert status == 400
    assert "'nosuch' does not belong to list of available choices" in body["error"]["message"]["profile"]
    status, body = kit.force(builder, "main;reboot")
    assert status == 400 and "it has characters ';'" in body["error"]["message"]["branch"]
    assert {b["buildid"] for b in kit.builds()} == before
