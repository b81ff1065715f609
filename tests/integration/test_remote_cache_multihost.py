"""The remote cache across hosts: host 2 installs host 1's published entry instead of building.

One real master with host 1's worker in this namespace and host 2's workers
in a network namespace (tests/test_multihost.py's ``Host2``: own settings,
topology, kernel cache, tree store and /tmp). Host 1 builds a commit and
publishes it; the same commit pushed to a new branch and built on host 2
misses host 2's cache, is fetched from the master over the worker's own
connection and installed in host 2's cache (``remote-hit``, no make). A
tampered copy on the master is refused with one line and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from master.records import db as records_db
from master.records import queries
from tests.support.fakekernel import tree_files
from tests.support.multihostkit import HOST2_WORKERS, WORKERS_TOML, Host2
from tests.support.netns import NetnsHost, netns_host  # noqa: F401  (fixture)
from tests.support.servicekit import ServiceKit

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

KERNEL_STEPS = ("reserve", "source-lock", "checkout", "cache-lookup", "configure", "make",
                "validate", "compile-commands", "cache-store")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finished(kit: ServiceKit, branch: str, after: int = 0) -> dict:
    started = kit.wait_build(branch, after_buildid=after, timeout=60)
    return kit.wait_finished(started["buildid"], timeout=300)


def steps_of(kit: ServiceKit, buildid: int) -> dict[str, dict]:
    return {s["name"]: s for s in kit.build_steps(buildid)}


def outcome_row(kit: ServiceKit, buildid: int) -> str:
    engine = records_db.make_engine(kit.settings.databases.records, must_exist=True)
    try:
        rows = [r for r in queries.recent_builds(engine, limit=200) if r["buildid"] == buildid]
    finally:
        engine.dispose()
    assert len(rows) == 1
    return rows[0]["kernel_outcome"]


def published_copies(kit: ServiceKit, key: str) -> list[Path]:
    root = Path(kit.settings.artifacts.root)
    return [m.parent for m in root.glob("*/*/files.json")
            if json.loads(m.read_text()).get("cache_key") == key]


def test_host2_installs_host1s_entry_and_refuses_a_tampered_one(
        tmp_path: Path, netns_host: NetnsHost) -> None:  # noqa: F811
    net = netns_host
    with ServiceKit(tmp_path, host="host1", llc_groups=[[0, 1]], pb_bind=net.host_addr,
                    workers_toml=WORKERS_TOML) as kit:
        # Host 1 builds and publishes the commit while it is the only host.
        tree = kit.make_tree(tree_files(), path=kit.root / "src" / "rc")
        push = kit.push(tree, "rc-host1")
        first = finished(kit, "rc-host1")
        assert first["results"] == kit.SUCCESS, kit.build_steps(first["buildid"])
        built = kit.build_properties(first["buildid"])
        key = built["cache_key"]
        assert built["kernel_outcome"] == "cached" and built["workername"] == "host1-llc0"
        assert published_copies(kit, key)

        # From now on only host 2 takes builds.
        workers = {w["name"]: w["workerid"] for w in kit.api("workers")["workers"]}
        status, answer = kit._rpc(f"workers/{workers['host1-llc0']}", "pause",
                                  {"reason": "remote cache test"}, login=True)
        assert status == 200, answer
        h2 = Host2(tmp_path / "host2", kit, net)
        try:
            res = h2.service("start", "--workers-only", "--timeout", "60")
            assert res.returncode == 0, res.stdout + res.stderr

            # The same commit on a new branch, built on host 2: fetched, not built.
            assert kit.push(tree, "rc-host2").sha == push.sha
            second = finished(kit, "rc-host2", after=first["buildid"])
            steps = steps_of(kit, second["buildid"])
            assert second["results"] == kit.SUCCESS, steps
            props = kit.build_properties(second["buildid"])
            assert props["workername"] in HOST2_WORKERS and props["host"] == "host2"
            assert props["kernel_outcome"] == "remote-hit" and props["cache_key"] == key
            assert steps["revision-lookup"]["state_string"].startswith("cache miss")
            assert steps["remote-lookup"]["state_string"].startswith(f"remote hit {key} (from ")
            for name in KERNEL_STEPS:
                assert steps[name]["results"] == kit.SKIPPED, (name, steps[name])
            assert "make" not in {s["name"] for s in kit.build_steps(second["buildid"])
                                  if s["results"] == kit.SUCCESS}
            entry = h2.cache / key
            for name in ("bzImage", "vmlinux", "metadata.json"):
                assert sha(entry / name) == sha(kit.cache_dir / key / name), name
            assert json.loads((entry / "ktstr-ci.json").read_text())["installed_from"] == "master"
            assert not (h2.trees / "linux-tiny").exists() or not any(
                (h2.trees / "linux-tiny").iterdir()), "a remote hit needs no tree"
            assert outcome_row(kit, second["buildid"]) == "remote-hit"

            # Tamper with every copy the master holds (a hit's copy is a hard link of the
            # build it was published from: flipping it twice would undo it); host 2
            # forgets its own.
            images = {(copy / "bzImage").stat().st_ino: copy / "bzImage"
                      for copy in published_copies(kit, key)}
            assert len(images) == 1, "the remote hit uploaded a second copy"
            for image in images.values():
                data = bytearray(image.read_bytes())
                data[len(data) // 2] ^= 0xFF
                image.write_bytes(bytes(data))
            shutil.rmtree(entry)
            assert kit.push(tree, "rc-host2-again").sha == push.sha
            third = finished(kit, "rc-host2-again", after=second["buildid"])
            steps = steps_of(kit, third["buildid"])
            # The refusal is a warning on the build; the kernel was built and cached.
            assert third["results"] == kit.WARNINGS, steps
            remote = steps["remote-lookup"]
            assert remote["results"] == kit.WARNINGS
            assert remote["state_string"].startswith("remote entry refused: bzImage sha256 ")
            log = kit.step_log(third["buildid"], "remote-lookup")
            refused = [ln for ln in log.splitlines() if ln.startswith("ktstr-ci: warning:")]
            assert len(refused) == 1, log
            assert refused[0].startswith(
                f"ktstr-ci: warning: remote cache entry {key} refused: bzImage has sha256 ")
            assert "the master recorded" in refused[0]
            assert steps["make"]["results"] == kit.SUCCESS
            props = kit.build_properties(third["buildid"])
            assert props["kernel_outcome"] == "cached" and props["host"] == "host2"
            assert (h2.cache / key / "bzImage").is_file()
            assert outcome_row(kit, third["buildid"]) == "cached"
        finally:
            stop = h2.service("stop", "--workers-only", timeout=60)
        assert stop.returncode == 0, stop.stdout + stop.stderr
