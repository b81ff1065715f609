"""Whole builds of the kernel factory on a real in-process master and LocalWorker.

The worker command is a stand-in ``ktstr-ci`` script that answers each
subcommand with the contract's JSON and logs its argv, so these tests show
Buildbot's own flow control (doStepIf on a cache hit, halt on failure,
alwaysRun after a stop) around our steps, with real processes and real git.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from buildbot.plugins import schedulers, util
from buildbot.process.results import CANCELLED, SKIPPED, SUCCESS, WARNINGS
from buildbot.test.util.integration import RunMasterBase
from twisted.internet import defer, reactor, task

from ktstr_steps.buildsteps import branch_dir, kernel_build_factory
from tests.support.fake_ktstr_ci import FAKE_KTSTR_CI


class TestKernelBuild(RunMasterBase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        base = Path(self.mktemp()).resolve()
        self.tools = base / "tools"
        self.tools.mkdir(parents=True)
        script = self.tools / "ktstr-ci"
        script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE_KTSTR_CI))
        script.chmod(0o755)
        self.repo = base / "linux.git"
        self.repo.mkdir()
        git = ["git", "-C", str(self.repo), "-c", "user.name=t", "-c", "user.email=t@e"]
        subprocess.run(["git", "init", "-q", "-b", "main", str(self.repo)], check=True)
        (self.repo / "Makefile").write_text("all:\n")
        subprocess.run([*git, "add", "Makefile"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "kernel"], check=True)
        self.trees = base / "trees"
        config = {
            "builders": [util.BuilderConfig(
                name="kernel", workernames=["local1"],
                factory=kernel_build_factory(repourl=str(self.repo), profile="tiny",
                                             ktstr_ci=str(script)),
            )],
            "schedulers": [schedulers.ForceScheduler(
                name="force", builderNames=["kernel"],
                # Worker property in production; a build property works the same way.
                properties=[util.FixedParameter(name="tree_store", default=str(self.trees))],
            )],
        }
        yield self.setup_master(config)

    def scenario(self, name: str) -> None:
        (self.tools / "scenario").write_text(name)

    def calls(self) -> list[str]:
        return (self.tools / "calls.log").read_text().splitlines()

    def results(self, build: dict[str, Any]) -> dict[str, int]:
        return {s["name"]: s["results"] for s in build["steps"]}

    @defer.inlineCallbacks
    def test_full_build(self) -> Any:
        self.scenario("build")
        build = yield self.doForceBuild(wantSteps=True, wantProperties=True)
        steps = self.results(build)
        # A forced build without a revision is looked up from its tree, after the checkout.
        self.assertEqual(steps.pop("revision-lookup"), SKIPPED)
        # No artifacts service, so no remote cache to ask.
        self.assertEqual(steps.pop("remote-lookup"), SKIPPED)
        self.assertEqual(steps.pop("remote-lookup-tree"), SKIPPED)
        # record has no records service here: "not recorded" is a warning on the step
        # and so on the build (every build here ends WARNINGS for that reason alone).
        self.assertEqual(steps.pop("record"), WARNINGS)
        # ... and no artifacts service: nothing to publish to.
        self.assertEqual(steps.pop("publish"), SKIPPED)
        self.assertEqual(set(steps.values()), {SUCCESS}, steps)
        self.assertEqual(build["results"], WARNINGS)  # not recorded
        self.assertEqual(build["properties"]["kernel_outcome"][0], "cached")
        self.assertEqual(build["properties"]["llc_cpus"][0], [0, 1])
        self.assertTrue((self.trees / "kernel" / branch_dir("") / "Makefile").is_file())
        self.assertEqual([c.split(" --")[0] for c in self.calls()], [
            "holder acquire", "holder lock-source", "trees prepare", "phase lookup", "phase configure",
            "phase make", "phase validate", "phase compile-commands", "phase store",
            "phase summary", "holder release",
        ])

    @defer.inlineCallbacks
    def test_cache_hit_skips_kernel_phases(self) -> Any:
        self.scenario("hit")
        build = yield self.doForceBuild(wantSteps=True, wantProperties=True)
        steps = self.results(build)
        self.assertEqual(build["results"], WARNINGS)  # not recorded
        for name in ("configure", "make", "validate", "compile-commands", "cache-store"):
            self.assertEqual(steps[name], SKIPPED, name)
        self.assertEqual(steps["release"], SUCCESS)
        self.assertEqual(build["properties"]["kernel_outcome"][0], "cache-hit")
        self.assertNotIn("phase make", " ".join(self.calls()))
        self.assertEqual(self.calls()[-1].split(" --")[0], "holder release")

    def head(self) -> str:
        return subprocess.run(["git", "-C", str(self.repo), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()

    @defer.inlineCallbacks
    def test_hit_by_revision_needs_no_tree(self) -> Any:
        self.scenario("revision-hit")
        sha = self.head()
        build = yield self.doForceBuild(wantSteps=True, wantProperties=True,
                                        forceParams={"revision": sha})
        steps = self.results(build)
        self.assertEqual(build["results"], WARNINGS)  # not recorded
        self.assertEqual(steps["revision-lookup"], SUCCESS)
        for name in ("reserve", "source-lock", "checkout", "cache-lookup", "configure", "make",
                     "validate", "compile-commands", "cache-store", "release"):
            self.assertEqual(steps[name], SKIPPED, name)
        self.assertEqual(build["properties"]["kernel_outcome"][0], "cache-hit")
        self.assertEqual([c.split(" --")[0] for c in self.calls()],
                         ["phase lookup", "phase summary"])
        self.assertIn(f"--revision {sha} --profile tiny", self.calls()[0])
        self.assertFalse((self.trees / "kernel").exists(), "a hit must create no tree")

    @defer.inlineCallbacks
    def test_revision_miss_goes_on_to_the_tree(self) -> Any:
        self.scenario("build")
        build = yield self.doForceBuild(wantSteps=True, wantProperties=True,
                                        forceParams={"revision": self.head()})
        steps = self.results(build)
        self.assertEqual(build["results"], WARNINGS)  # not recorded
        self.assertEqual(steps["revision-lookup"], SUCCESS)
        self.assertEqual(build["properties"]["kernel_outcome"][0], "cached")
        self.assertEqual([c.split(" --")[0] for c in self.calls()], [
            "phase lookup", "holder acquire", "holder lock-source", "trees prepare", "phase lookup",
            "phase configure", "phase make", "phase validate", "phase compile-commands",
            "phase store", "phase summary", "holder release",
        ])

    @defer.inlineCallbacks
    def test_stop_during_make_still_records_and_releases(self) -> Any:
        self.scenario("stop")
        done = self.doForceBuild(wantSteps=True, wantProperties=True)
        marker = self.tools / "make-started"
        for _ in range(600):
            if marker.exists():
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertTrue(marker.exists(), "make never started")
        [running] = yield self.master.data.get(("builds",))
        yield self.master.data.control("stop", {"reason": "test"},
                                       ("builds", running["buildid"]))
        build = yield done
        steps = self.results(build)
        self.assertEqual(build["results"], CANCELLED)
        self.assertEqual(steps["make"], CANCELLED)
        self.assertNotIn("validate", steps)  # never started after the stop
        self.assertEqual(steps["release"], SUCCESS)
        self.assertEqual(build["properties"]["kernel_outcome"][0], "cancelled")
        self.assertEqual(self.calls()[-1].split(" --")[0], "holder release")
        # The worker's TERM went to the fake make's process group: nothing sleeps on.
        self.assertNotIn(str(self.tools), subprocess.run(
            ["ps", "-eo", "args"], capture_output=True, text=True).stdout)

