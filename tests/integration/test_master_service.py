"""A real master and real pinned workers (tests/support/servicekit.py): push, schedule, web, auth.

These use the stand-in factory (tests/support/servicekit.py ``standin_factory``) so
they test scheduling, hooks, workers and the web - not the kernel build.
"""

from __future__ import annotations

import base64
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.support.paths import VENV_BIN
from tests.support.servicekit import CANCELLED, SKIPPED, SUCCESS, ServiceKit

pytestmark = pytest.mark.integration
STANDIN = "tests.support.servicekit:standin_factory"


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory):
    with ServiceKit(tmp_path_factory.mktemp("kit"), factory=STANDIN) as k:
        yield k


def post_change(kit: ServiceKit, fields: dict[str, str], password: str | None) -> int:
    req = urllib.request.Request(
        f"{kit.web_url}change_hook/base", data=urllib.parse.urlencode(fields).encode(),
        method="POST",
    )
    if password is not None:
        tok = base64.b64encode(f"hook:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {tok}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_workers_connected_and_pinned(kit: ServiceKit) -> None:
    # (the janitor's "__Janitor" is Buildbot's own in-process worker)
    workers = [w for w in kit.api("workers")["workers"] if not w["name"].startswith("__")]
    assert {w["name"] for w in workers} == set(kit.worker_names)
    assert all(w["connected_to"] for w in workers)
    for spec in kit.service.local_specs:
        pid = kit.worker_pids()[spec.name]
        proc = psutil.Process(pid)
        assert sorted(proc.cpu_affinity()) == list(spec.pin_cpus)
        assert "twistd" in " ".join(proc.cmdline()) or "buildbot-worker" in " ".join(proc.cmdline())
        info = next(w for w in workers if w["name"] == spec.name)
        assert info["workerinfo"]["host"].startswith(f"kit LLC group {spec.llc_index}, CPUs ")
        # numcpus (what the worker reports, and make's default -j) = the group's size
        assert f"numcpus={len(spec.cpus)}," in (spec.basedir / "buildbot.tac").read_text()


def test_anonymous_read(kit: ServiceKit) -> None:
    names = {b["name"] for b in kit.api("builders")["builders"]}
    assert {"linux-tiny", "linux-default", "linux-preempt", "linux-tiny-preempt"} <= names
    with urllib.request.urlopen(kit.web_url, timeout=10) as resp:
        assert resp.status == 200 and b"<html" in resp.read().lower()
    plugins = urllib.request.urlopen(f"{kit.web_url}config", timeout=10).read().decode()
    for view in ("waterfall_view", "console_view", "grid_view"):
        assert view in plugins


def test_push_builds_at_once(kit: ServiceKit) -> None:
    tree = kit.make_tree({"Makefile": "all:\n\ttrue\n"})
    before = max([b["buildid"] for b in kit.builds()] or [0])
    t0 = time.monotonic()
    res = kit.push(tree, "feature/fast")
    build = kit.wait_build("feature/fast", after_buildid=before, timeout=10)
    elapsed = time.monotonic() - t0
    # The push itself starts the build (no poller runs: its interval would be minutes);
    # push (both hooks) + change + scheduler + worker start take about 1 s on an idle
    # host. How fast exactly is bench/run.py's business, not a timed test's.
    assert elapsed < 10.0, f"build started {elapsed:.2f}s after the push began"
    assert "build of feature/fast" in res.output and "requested" in res.output
    build = kit.wait_finished(build["buildid"], timeout=60)
    assert build["results"] == SUCCESS
    props = kit.build_properties(build["buildid"])
    assert props["branch"] == "feature/fast" and props["revision"] == res.sha
    assert props["profile"] == "tiny" and props["buildername"] == "linux-tiny"
    assert props["scheduler"] == "push-linux"
    assert props["host"] == "kit" and props["llc_index"] == 0
    assert props["tree_store"] == str(kit.tree_store)
    spec = kit.service.local_specs[0]
    log = kit.step_log(build["buildid"], "info")
    assert f"affinity={','.join(map(str, spec.pin_cpus))}" in log
    assert f"KTSTR_CACHE_DIR={kit.cache_dir}" in log
    assert [s["name"] for s in kit.build_steps(build["buildid"])][:3] == [
        "worker_preparation", "info", "hold"]


def test_master_holds_its_sqlite_database_open(kit: ServiceKit) -> None:
    # Without the held connection every database call's close checkpoints and deletes
    # the WAL (Buildbot opens SQLite with NullPool): a build's many calls each pay for it.
    db = kit.settings.master.basedir / "state.sqlite"
    pid = int((kit.settings.master.basedir / "twistd.pid").read_text().strip())
    held = [f.path for f in psutil.Process(pid).open_files()]
    assert str(db) in held, f"the master does not hold {db}: {held}"
    tree = kit.make_tree({"Makefile": "all:\n\ttrue\n"})
    before = max([b["buildid"] for b in kit.builds()] or [0])
    kit.push(tree, "feature/wal")
    build = kit.wait_build("feature/wal", after_buildid=before, timeout=10)
    assert kit.wait_finished(build["buildid"], timeout=60)["results"] == SUCCESS
    assert Path(f"{db}-wal").exists(), "a database call's close checkpointed the WAL away"


def test_deleted_branch_starts_nothing(kit: ServiceKit) -> None:
    tree = kit.make_tree({"a": "1"})
    kit.push(tree, "short-lived")
    first = kit.wait_build("short-lived", finished=True, timeout=30)
    changes_before = len(kit.changes())
    res = kit.delete_branch(tree, "short-lived")
    assert res.returncode == 0 and "deleted; nothing to build" in res.output
    time.sleep(1.0)
    assert len(kit.changes()) == changes_before
    assert [b["buildid"] for b in kit.builds(branch="short-lived")] == [first["buildid"]]


def test_change_hook_needs_the_secret(kit: ServiceKit) -> None:
    changes = len(kit.changes())
    fields = {"branch": "sneaky", "revision": "c" * 40, "repository": str(kit.repo_path),
              "project": "linux"}
    assert post_change(kit, fields, None) == 401
    assert post_change(kit, fields, "wrong") == 401
    assert len(kit.changes()) == changes
    # a wrong secret in the hook: the push is stored, the hook says 401, nothing runs
    real = kit.hook_password_file.read_text()
    try:
        kit.hook_password_file.write_text("not-the-password\n")
        tree = kit.make_tree({"b": "2"})
        res = kit.push(tree, "wrong-secret")
        assert "the master refused the hook's credentials (HTTP 401)" in res.output
    finally:
        kit.hook_password_file.write_text(real)
    time.sleep(0.5)
    assert len(kit.changes()) == changes
    assert kit.builds(branch="wrong-secret") == []


def test_unbuildable_branch_posted_by_hand_starts_nothing(kit: ServiceKit) -> None:
    password = kit.hook_password_file.read_text().strip()
    fields = {"branch": "x;reboot", "revision": "d" * 40, "repository": str(kit.repo_path),
              "project": "linux"}
    before = len(kit.api("buildsets")["buildsets"])
    changes = len(kit.changes())
    assert post_change(kit, fields, password) == 400  # refused: not even stored
    time.sleep(0.5)
    assert len(kit.api("buildsets")["buildsets"]) == before
    assert len(kit.changes()) == changes


def test_force_needs_login(kit: ServiceKit) -> None:
    status, body = kit.force("linux-tiny", "main", login=False)
    assert status == 403 and "developers" in str(body)
    tree = kit.make_tree({"c": "3"})
    kit.push(tree, "forced")
    pushed = kit.wait_build("forced", finished=True, timeout=30)
    status, body = kit.force("linux-tiny", "forced", profile="preempt", clean=True)
    assert status == 200, body
    build = kit.wait_build("forced", finished=True, after_buildid=pushed["buildid"], timeout=30)
    props = kit.build_properties(build["buildid"])
    assert props["profile"] == "preempt" and props["clean"] is True and props["force"] is False
    assert props["scheduler"] == "force" and props["owner"] == "admin"
    # the builder's own profile when the form keeps the default choice
    status, _ = kit.force("linux-tiny", "forced")
    assert status == 200
    again = kit.wait_build("forced", finished=True, after_buildid=build["buildid"], timeout=30)
    assert kit.build_properties(again["buildid"])["profile"] == "tiny"
    status, body = kit.force("linux-tiny", "bad;branch")
    assert status != 200 and "branch" in str(body)


def test_stop_needs_login(kit: ServiceKit) -> None:
    kit.set_hold(60)
    try:
        tree = kit.make_tree({"d": "4"})
        kit.push(tree, "long")
        build = kit.wait_build("long", timeout=10)
        kit.wait_for(lambda: any(s["name"] == "hold" and s["started_at"]
                                 for s in kit.build_steps(build["buildid"])), 20, "hold step")
        status, _ = kit.stop_build(build["buildid"], login=False)
        assert status == 403
        status, body = kit.stop_build(build["buildid"], "enough")
        assert status == 200, body
        done = kit.wait_finished(build["buildid"], timeout=30)
        assert done["results"] == CANCELLED
    finally:
        kit.set_hold(0)


def buildrequest_branches(kit: ServiceKit) -> list[tuple[str, bool, int | None, str]]:
    out = []
    for br in kit.buildrequests(order="buildrequestid"):
        bs = kit.api(f"buildsets/{br['buildsetid']}", property="*")["buildsets"][0]
        sched = kit.api(f"buildsets/{br['buildsetid']}/properties")["properties"][0]
        out.append((bs["sourcestamps"][0]["branch"], br["complete"], br["results"],
                    sched["scheduler"][0]))
    return out


def test_newer_push_supersedes_queued_same_branch_only(tmp_path: Path) -> None:
    # No worker connects, so every request stays queued.
    with ServiceKit(tmp_path, factory=STANDIN, workers=False) as kit:
        tree = kit.make_tree({"x": "1"})
        kit.push(tree, "alpha")
        kit.push(tree, "beta")
        kit.commit(tree, {"x": "2"})
        kit.push(tree, "alpha")
        kit.wait_for(lambda: len(kit.buildrequests()) == 3, 10, "three build requests")
        for _ in range(2):
            status, body = kit.force("linux-tiny", "beta", clean=True)
            assert status == 200, body
        kit.wait_for(lambda: len(kit.buildrequests()) == 5, 10, "five build requests")
        time.sleep(0.5)
        assert buildrequest_branches(kit) == [
            ("alpha", True, SKIPPED, "push-linux"),  # superseded by the newer alpha push
            ("beta", False, -1, "push-linux"),  # another branch: kept (-1: pending)
            ("alpha", False, -1, "push-linux"),
            ("beta", False, -1, "force"),  # forced builds are never merged
            ("beta", False, -1, "force"),
        ]


def test_branches_build_in_parallel_on_two_llc_groups(tmp_path: Path) -> None:
    with ServiceKit(tmp_path, factory=STANDIN, llc_groups=[[0], [1]]) as kit:
        assert kit.worker_names == ["kit-llc0", "kit-llc1"]
        pids = kit.worker_pids()
        assert psutil.Process(pids["kit-llc0"]).cpu_affinity() == [0]
        assert psutil.Process(pids["kit-llc1"]).cpu_affinity() == [1]
        kit.set_hold(3)
        tree = kit.make_tree({"y": "1"})
        kit.push(tree, "left")
        kit.push(tree, "right")
        left = kit.wait_finished(kit.wait_build("left")["buildid"], 60)
        right = kit.wait_finished(kit.wait_build("right")["buildid"], 60)
        assert left["results"] == right["results"] == SUCCESS
        # overlapping in time, on different workers
        assert left["started_at"] < right["complete_at"] and right["started_at"] < left["complete_at"]
        lw = kit.build_properties(left["buildid"])
        rw = kit.build_properties(right["buildid"])
        assert {lw["workername"], rw["workername"]} == {"kit-llc0", "kit-llc1"}
        for build, props in ((left, lw), (right, rw)):
            log = kit.step_log(build["buildid"], "info")
            assert f"affinity={props['llc_index']}" in log
            assert f"llc_cpus={props['llc_index']}" in log


def test_real_master_cfg_starts(tmp_path: Path) -> None:
    """The checkout's master.cfg with the real factory and records service comes up."""
    with ServiceKit(tmp_path) as kit:
        builders = {b["name"] for b in kit.api("builders")["builders"]}
        assert "linux-tiny" in builders
        assert all(w["connected_to"] for w in kit.api("workers")["workers"]
                   if w["name"] in kit.worker_names)
        assert (kit.root / "records.sqlite").exists()
        # `buildbot reconfig` re-runs master.cfg (which drops and re-imports master.*)
        proc = subprocess.run(
            [str(VENV_BIN / "buildbot"), "reconfig", str(kit.service.master_dir)],
            env=kit.service.child_env(), capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Reconfiguration appears to have completed successfully" in proc.stdout
        assert "linux-tiny" in {b["name"] for b in kit.api("builders")["builders"]}
