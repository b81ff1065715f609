"""Whole builds with the master's remote cache: a remote hit ends the build before any tree,
a refused entry goes on and builds (real in-process master, LocalWorker, stand-in ktstr-ci)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from buildbot.plugins import schedulers, util
from buildbot.process.results import SKIPPED, SUCCESS, WARNINGS
from buildbot.test.util.integration import RunMasterBase
from buildbot.util import service
from twisted.internet import defer

from ktstr_steps.buildsteps import kernel_build_factory
from ktstr_steps.buildsteps.services import ARTIFACTS_SERVICE_NAME
from tests.support.fake_ktstr_ci import FAKE_KTSTR_CI

TREE_AND_KERNEL = ("reserve", "source-lock", "checkout", "cache-lookup", "configure", "make",
                   "validate", "compile-commands", "cache-store")


class FakeRemoteStore(service.BuildbotService):
    """The master's artifacts service: one published entry, whatever the key."""

    name = ARTIFACTS_SERVICE_NAME

    def checkConfig(self, *, entry_dir: str) -> None:  # type: ignore[override]
        pass

    def reconfigService(self, *, entry_dir: str) -> Any:  # type: ignore[override]
        self.root = Path(entry_dir)
        self.max_file_bytes = None
        self.asked: list[str] = []
        return super().reconfigService()

    def find_entry(self, cache_key: str) -> defer.Deferred[dict[str, Any]]:
        self.asked.append(cache_key)
        files = {n: {"size": (self.root / n).stat().st_size, "sha256": "a" * 64}
                 for n in ("bzImage", "metadata.json")}
        return defer.succeed({"dir": str(self.root), "builder_dir": "kernel", "number": 1,
                              "builder": "kernel", "files": files, "outcome": "cached"})

    def url_for(self, builder_dir: str, number: int, name: str = "") -> str:
        return f"http://master/{builder_dir}/{number}/{name}"

    def published(self, builder_dir: str) -> defer.Deferred[None]:
        return defer.succeed(None)


class TestRemoteCacheBuild(RunMasterBase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        base = Path(self.mktemp()).resolve()
        self.tools = base / "tools"
        self.tools.mkdir(parents=True)
        script = self.tools / "ktstr-ci"
        script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE_KTSTR_CI))
        script.chmod(0o755)
        entry = self.entry = base / "published"
        entry.mkdir()
        (entry / "bzImage").write_bytes(b"MZ!")
        (entry / "metadata.json").write_text("{}")
        # What the artifacts service keeps beside a published build's files.
        (entry / "SHA256SUMS").write_text("sums\n")
        (entry / "files.json").write_text(
            '{"builder": "kernel", "outcome": "cached", "files": {"bzImage": {"size": 3}, '
            '"metadata.json": {"size": 2}}}')
        self.repo = base / "linux.git"
        self.repo.mkdir()
        git = ["git", "-C", str(self.repo), "-c", "user.name=t", "-c", "user.email=t@e"]
        subprocess.run(["git", "init", "-q", "-b", "main", str(self.repo)], check=True)
        (self.repo / "Makefile").write_text("all:\n")
        subprocess.run([*git, "add", "Makefile"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "kernel"], check=True)
        self.sha = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                                  text=True).stdout.strip()
        self.trees = base / "trees"
        config = {
            "builders": [util.BuilderConfig(
                name="kernel", workernames=["local1"],
                factory=kernel_build_factory(repourl=str(self.repo), profile="tiny",
                                             ktstr_ci=str(script)),
            )],
            "schedulers": [schedulers.ForceScheduler(
                name="force", builderNames=["kernel"],
                properties=[util.FixedParameter(name="tree_store", default=str(self.trees))],
            )],
            "services": [FakeRemoteStore(entry_dir=str(entry))],
        }
        yield self.setup_master(config)

    def scenario(self, name: str) -> None:
        (self.tools / "scenario").write_text(name)

    def calls(self) -> list[str]:
        return [c.split(" --")[0] for c in (self.tools / "calls.log").read_text().splitlines()]

    @defer.inlineCallbacks
    def build(self) -> Any:
        build = yield self.doForceBuild(wantSteps=True, wantProperties=True,
                                        forceParams={"revision": self.sha})
        return build, {s["name"]: s["results"] for s in build["steps"]}

    @defer.inlineCallbacks
    def test_remote_hit_installs_and_skips_every_later_phase(self) -> Any:
        self.scenario("remote-hit")
        build, steps = yield self.build()
        # WARNINGS only because no records service runs here ("not recorded").
        self.assertEqual(steps["record"], WARNINGS)
        self.assertEqual(build["results"], WARNINGS, steps)
        self.assertEqual(steps["revision-lookup"], SUCCESS)
        self.assertEqual(steps["remote-lookup"], SUCCESS)
        for name in (*TREE_AND_KERNEL, "remote-lookup-tree", "release"):
            self.assertEqual(steps[name], SKIPPED, name)
        self.assertEqual(build["properties"]["kernel_outcome"][0], "remote-hit")
        # Publish links the master's copy into this build's directory: no upload, no command.
        self.assertEqual(steps["publish"], SUCCESS)
        self.assertEqual(build["properties"]["artifacts_url"][0], "http://master/kernel/1/")
        published = self.entry / "kernel" / "1"
        self.assertEqual((published / "bzImage").stat().st_ino,
                         (self.entry / "bzImage").stat().st_ino)
        self.assertEqual(self.calls(), ["phase lookup", "phase install", "phase summary"])
        # The files came over Buildbot's transfer into the staging dir install read.
        self.assertEqual((self.tools / "staged.log").read_text(), "bzImage metadata.json")
        self.assertFalse((self.trees / "kernel").exists(), "a remote hit must create no tree")

    @defer.inlineCallbacks
    def test_refused_entry_warns_and_builds(self) -> Any:
        self.scenario("remote-refused")
        build, steps = yield self.build()
        self.assertEqual(build["results"], WARNINGS, steps)
        self.assertEqual(steps["remote-lookup"], WARNINGS)
        # The tree lookup has the same key: the master is not asked twice.
        self.assertEqual(steps["remote-lookup-tree"], SKIPPED)
        self.assertEqual(steps["make"], SUCCESS)
        self.assertEqual(build["properties"]["kernel_outcome"][0], "cached")
        self.assertEqual(self.calls(), [
            "phase lookup", "phase install", "holder acquire", "holder lock-source",
            "trees prepare", "phase lookup", "phase configure", "phase make", "phase validate",
            "phase compile-commands", "phase store", "phase publish", "phase summary",
            "holder release"])
        store = self.master.namedServices.get(ARTIFACTS_SERVICE_NAME) or \
            self.master.service_manager.namedServices[ARTIFACTS_SERVICE_NAME]
        self.assertEqual(len(store.asked), 1)
