"""The kernel build factory's shape (à la llvm-zorg) and the stop path across steps."""

from __future__ import annotations

from typing import Any

from buildbot.process.factory import BuildFactory
from buildbot.process.properties import Property
from buildbot.process.results import CANCELLED, SUCCESS
from twisted.trial import unittest

from ktstr_steps.buildsteps import (
    KERNEL_PROPERTIES,
    CacheLookup,
    CacheStore,
    CompileCommands,
    Configure,
    KernelCheckout,
    KernelMake,
    Record,
    Release,
    RemoteLookup,
    Reserve,
    RevisionLookup,
    SourceLock,
    Validate,
    kernel_build_factory,
    not_cache_hit,
)
from ktstr_steps.buildsteps.lookup import held_something
from ktstr_steps.buildsteps.publish import PublishKernel
from tests.support.steps_harness import HOLDER, STATE, FakeRecords, KtstrStepMixin, ktstr

ORDER = [
    ("revision-lookup", RevisionLookup),
    ("remote-lookup", RemoteLookup),
    ("reserve", Reserve),
    ("source-lock", SourceLock),
    ("checkout", KernelCheckout),
    ("cache-lookup", CacheLookup),
    ("remote-lookup-tree", RemoteLookup),
    ("configure", Configure),
    ("make", KernelMake),
    ("validate", Validate),
    ("compile-commands", CompileCommands),
    ("cache-store", CacheStore),
    ("publish", PublishKernel),
    ("record", Record),
    ("release", Release),
]
KERNEL_PHASES = {"configure", "make", "validate", "compile-commands", "cache-store"}
# A hit of the revision lookup also skips everything that needs a tree.
TREE_STEPS = {"reserve", "source-lock", "checkout", "cache-lookup"}


def built_steps(factory: BuildFactory) -> list[Any]:
    return [f.buildStep() for f in factory.steps]


class FakeStep:
    def __init__(self, **props: Any) -> None:
        self.props = props

    def getProperty(self, name: str, default: Any = None) -> Any:
        return self.props.get(name, default)


class TestFactoryShape(unittest.TestCase):
    def setUp(self) -> None:
        self.factory = kernel_build_factory(repourl="/srv/ci/var/linux.git", profile="tiny")
        self.steps = built_steps(self.factory)

    def by_name(self) -> dict[str, Any]:
        return {s.name: s for s in self.steps}

    def test_steps_in_build_order(self) -> None:
        self.assertEqual([(s.name, type(s)) for s in self.steps], ORDER)

    def test_record_and_release_always_run(self) -> None:
        always = [s.name for s in self.steps if s.alwaysRun]
        self.assertEqual(always, ["record", "release"])

    def test_cache_hit_skips_only_tree_steps_and_kernel_phases(self) -> None:
        skipped_on_hit = {s.name for s in self.steps if s.doStepIf is not_cache_hit}
        self.assertEqual(skipped_on_hit, KERNEL_PHASES | TREE_STEPS)
        by_name = {s.name: s for s in self.steps}
        self.assertIs(by_name["release"].doStepIf, held_something)
        for s in self.steps:
            if s.name not in KERNEL_PHASES | TREE_STEPS | {"release"}:
                self.assertIs(s.doStepIf, True, s.name)
        self.assertFalse(held_something(FakeStep(hit_before_checkout=True)))
        self.assertTrue(held_something(FakeStep(kernel_outcome="cache-hit")))
        self.assertFalse(not_cache_hit(FakeStep(kernel_outcome="cache-hit")))
        self.assertTrue(not_cache_hit(FakeStep()))

    def test_failures_halt_before_record(self) -> None:
        halting = [s.name for s in self.steps if s.haltOnFailure]
        # A remote entry that cannot be had is a miss: the build goes on and builds it.
        self.assertEqual(halting, [name for name, _ in ORDER[:12] if "remote" not in name])
        self.assertFalse(self.by_name()["record"].flunkOnFailure)  # a lost row never fails a kernel build

    def test_warnings_reach_the_build(self) -> None:
        warn = {s.name for s in self.steps if s.warnOnWarnings}
        self.assertEqual(warn, {"remote-lookup", "remote-lookup-tree", "configure", "make",
                                "cache-store", "publish", "record"})

    def test_stop_lets_ktstr_ci_kill_make(self) -> None:
        make = self.by_name()["make"]
        self.assertEqual(make.sigtermTime, 30)
        self.assertEqual(make.interruptSignal, "KILL")

    def test_no_environment_in_logs(self) -> None:
        for s in self.steps:
            self.assertIs(s.logEnviron, False, s.name)

    def test_cpu_cap_defaults_to_worker_llc_group(self) -> None:
        self.assertEqual(self.by_name()["reserve"].cpu_cap, Property("llc_ncpus", default=None))
        explicit = built_steps(kernel_build_factory(repourl="r", profile="p", cpu_cap=3))
        self.assertEqual(explicit[2].cpu_cap, 3)

    def test_options_reach_their_steps(self) -> None:
        steps = built_steps(kernel_build_factory(
            repourl="/r.git", profile=Property("profile"), lock_wait=60, force=True,
            clean=Property("clean"), ktstr_ci="/opt/bin/ktstr-ci",
        ))
        by_name = {s.name: s for s in steps}
        self.assertEqual(by_name["reserve"].lock_wait, 60)
        self.assertEqual(by_name["source-lock"].lock_wait, 60)
        self.assertEqual(by_name["checkout"].repourl, "/r.git")
        self.assertEqual(by_name["checkout"].mode, "incremental")
        self.assertEqual(by_name["cache-lookup"].profile, Property("profile"))
        self.assertIs(by_name["cache-lookup"].force, True)
        self.assertEqual(by_name["revision-lookup"].profile, Property("profile"))
        self.assertIs(by_name["revision-lookup"].force, True)
        self.assertEqual(by_name["configure"].clean, Property("clean"))
        for s in steps:
            if s.name not in ("checkout", "publish"):  # publish runs no ktstr-ci
                self.assertEqual(s.ktstr_ci, "/opt/bin/ktstr-ci", s.name)

    def test_bad_option_is_config_error(self) -> None:
        from buildbot.config import ConfigErrors

        with self.assertRaises(ConfigErrors):
            kernel_build_factory(repourl="r", profile="p", lock_wait=-5)

    def test_kernel_properties_listed(self) -> None:
        for name in ("cache_key", "kernel_outcome", "llc_cpus", "make_jobs", "config_hash",
                     "image_path", "make_warnings", "entry_dir", "holder_name"):
            self.assertIn(name, KERNEL_PROPERTIES)


class TestStopDuringMake(KtstrStepMixin, unittest.TestCase):
    """A stop mid-make: make is killed (CANCELLED), then the alwaysRun steps still do their job."""

    def test_interrupted_make_then_record_and_release(self) -> None:
        records = FakeRecords()
        make_step = self.setup_ktstr_step(KernelMake())
        self.setup_step(Record(records=records))
        self.setup_step(Release())
        self.build.setProperty("phase_seconds", {"lookup": 0.1}, "CacheLookup")

        def stop(_cmd: object) -> Any:
            # The user presses Stop while make is compiling. (interrupt_nth_remote_command
            # counts per step, so it would interrupt record's and release's commands too.)
            self.conn.set_expect_interrupt()
            return make_step.interrupt("stopped by user")

        self.expect_commands(
            ktstr("phase", "make", "--state", STATE, "--holder", HOLDER, "--json")
            .stderr("  CC      kernel/fork.o\n")
            .behavior(stop)
            .exit(-1),
            ktstr("phase", "summary", "--state", STATE, "--json")
            .answer({"ok": False, "outcome": "failed", "phases": {"make": 12.0}})
            .exit(1),
            ktstr("holder", "release", "--name", HOLDER, "--json")
            .answer({"name": HOLDER, "released": ["source-lock", "sandbox",
                                                         "llc-locks"]})
            .exit(0),
        )
        # What Build.stopBuild leaves behind for the steps that still run.
        self.build.stopped = True
        self.build.results = CANCELLED
        self.expect_outcome(result=CANCELLED, state_string="make interrupted (cancelled)")
        self.expect_outcome(result=SUCCESS, state_string="recorded row 1 (cancelled)")
        self.expect_outcome(
            result=SUCCESS, state_string="released source-lock, sandbox, llc-locks"
        )
        d = self.run_step()

        @d.addCallback
        def check(_: object) -> None:
            self.assertEqual(records.rows[0]["kernel_outcome"], "cancelled")
            self.assertEqual(records.rows[0]["make_s"], 12.0)

        return d
