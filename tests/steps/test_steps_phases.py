"""The kernel phases: cache lookup, configure, make, validate, compile_commands, cache store."""

from __future__ import annotations

from buildbot.process.properties import Property
from buildbot.process.results import CANCELLED, FAILURE, SUCCESS, WARNINGS
from twisted.trial import unittest

from ktstr_steps.buildsteps import (
    CacheLookup,
    CacheStore,
    CompileCommands,
    Configure,
    KernelMake,
    Validate,
)
from tests.support.steps_harness import HOLDER, STATE, TREE, KtstrStepMixin, ktstr

KEY = "local-1a2b3c4-x86_64-kc0123abcd"


def lookup(*extra: str):
    return ktstr("phase", "lookup", "--state", STATE, "--source", TREE, "--profile", "tiny",
                 *extra, "--json")


class TestCacheLookup(KtstrStepMixin, unittest.TestCase):
    def test_hit_sets_outcome_and_key(self) -> None:
        self.setup_ktstr_step(CacheLookup(profile="tiny"))
        self.expect_commands(lookup().answer({
            "cache_key": KEY, "hit": True, "entry_dir": f"/cache/{KEY}", "dirty": False,
            "is_git": True, "git_hash": "1a2b3c4", "outcome": "cache-hit"}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string=f"cache hit {KEY}")
        self.expect_property("kernel_outcome", "cache-hit", "CacheLookup")
        self.expect_property("cache_key", KEY)
        self.expect_property("entry_dir", f"/cache/{KEY}")
        self.expect_property("kernel_profile", "tiny")
        return self.run_step()

    def test_miss_dirty(self) -> None:
        self.setup_ktstr_step(CacheLookup(profile="tiny"))
        self.expect_commands(lookup().answer({
            "cache_key": KEY, "hit": False, "entry_dir": None, "dirty": True, "is_git": True,
            "git_hash": "1a2b3c4", "outcome": None}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string=f"cache miss {KEY} (dirty tree)")
        self.expect_no_property("kernel_outcome")
        return self.run_step()

    def test_force_and_rendered_profile(self) -> None:
        self.setup_ktstr_step(
            CacheLookup(profile=Property("profile"), force=Property("force")),
            profile="tiny", force=True,
        )
        self.expect_commands(lookup("--force").answer({
            "cache_key": KEY, "hit": False, "entry_dir": None, "dirty": False, "is_git": True,
            "git_hash": "1a2b3c4", "outcome": None}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string=f"cache miss {KEY} (forced rebuild)")
        return self.run_step()

    def test_unknown_profile_fails(self) -> None:
        self.setup_ktstr_step(CacheLookup(profile="tiny"))
        self.expect_commands(lookup().answer({"ok": False, "errors": [
            {"kind": "profile", "message": "unknown profile 'tiny'"}]}).exit(1))
        self.expect_outcome(
            result=FAILURE, state_string="cache-lookup failed: unknown profile 'tiny' (failure)"
        )
        return self.run_step()

    def test_config_errors(self) -> None:
        with self.assertRaisesConfigError("profile must be"):
            CacheLookup(profile=None)
        with self.assertRaisesConfigError("force must be"):
            CacheLookup(profile="tiny", force="yes")


class TestConfigure(KtstrStepMixin, unittest.TestCase):
    def configure(self, *extra: str):
        return ktstr("phase", "configure", "--state", STATE, "--holder", HOLDER, *extra, "--json")

    def test_clean_config(self) -> None:
        self.setup_ktstr_step(Configure())
        self.expect_commands(self.configure().answer(
            {"configured": True, "overrides": [], "dropped": []}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string="configured")
        self.expect_property("config_dropped", 0)
        return self.run_step()

    def test_dropped_options_warn_with_own_log(self) -> None:
        step = self.setup_ktstr_step(Configure(clean=True))
        self.expect_commands(self.configure("--clean").answer({
            "configured": True,
            "overrides": [{"symbol": "CONFIG_BPF", "was": "=y", "now": "is not set"}],
            "dropped": [
                {"line": "CONFIG_SCHED_CLASS_EXT=y",
                 "final_state": "# CONFIG_SCHED_CLASS_EXT is not set"},
                {"line": "CONFIG_KVM=y", "final_state": "# CONFIG_KVM is not set"},
            ]}).exit(0))
        self.expect_outcome(
            result=WARNINGS, state_string="configured; 1 override, 2 dropped (warnings)"
        )
        self.expect_log_file(
            "kconfig-warnings",
            "override: CONFIG_BPF was =y, now is not set\n"
            "dropped: CONFIG_SCHED_CLASS_EXT=y (final state: # CONFIG_SCHED_CLASS_EXT is not set)\n"
            "dropped: CONFIG_KVM=y (final state: # CONFIG_KVM is not set)\n",
        )
        self.expect_property("config_overrides", 1)
        self.expect_property("config_dropped", 2)
        # warnOnWarnings: the dropped options reach the build's result.
        self.assertTrue(step.warnOnWarnings)
        return self.run_step()

    def test_overrides_only_succeed(self) -> None:
        self.setup_ktstr_step(Configure())
        self.expect_commands(self.configure().answer({"configured": True, "overrides": [
            {"symbol": "CONFIG_A", "was": "=y", "now": "=m"},
            {"symbol": "CONFIG_B", "was": "=y", "now": "=m"}], "dropped": []}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string="configured; 2 overrides, 0 dropped")
        return self.run_step()

    def test_configure_failure(self) -> None:
        self.setup_ktstr_step(Configure())
        self.expect_commands(self.configure().answer({"ok": False, "errors": [
            {"kind": "configure", "message": "make olddefconfig failed"}]}).exit(1))
        self.expect_outcome(
            result=FAILURE, state_string="configure failed: make olddefconfig failed (failure)"
        )
        return self.run_step()


class TestKernelMake(KtstrStepMixin, unittest.TestCase):
    def make(self):
        return ktstr("phase", "make", "--state", STATE, "--holder", HOLDER, "--json")

    def test_built(self) -> None:
        self.setup_ktstr_step(KernelMake())
        self.expect_commands(self.make().stdout("  CC      kernel/sched/ext.o\n").answer(
            {"jobs": 2, "warnings": 0, "errors": 0, "failed_target": None, "seconds": 30.5}
        ).exit(0))
        self.expect_outcome(result=SUCCESS, state_string="built (-j2)")
        self.expect_property("make_warnings", 0, "KernelMake")
        self.expect_property("make_jobs", 2)
        self.expect_property("phase_seconds", {"make": 30.5})
        self.expect_log_file("stdio", "  CC      kernel/sched/ext.o\n")
        return self.run_step()

    def test_warnings_make_step_warnings(self) -> None:
        step = self.setup_ktstr_step(KernelMake())
        self.expect_commands(self.make().answer(
            {"jobs": 2, "warnings": 3, "errors": 0, "failed_target": None, "seconds": 1.0}
        ).exit(0))
        self.expect_outcome(result=WARNINGS, state_string="built (-j2); 3 warnings (warnings)")
        self.expect_property("make_warnings", 3)
        self.assertTrue(step.warnOnWarnings)
        return self.run_step()

    def test_failure_names_target(self) -> None:
        self.setup_ktstr_step(KernelMake())
        self.expect_commands(self.make().stderr("kernel/sched/ext.c:1: error: oops\n").answer(
            {"ok": False, "jobs": 2, "warnings": 1, "errors": 1,
             "failed_target": "kernel/sched/ext.o", "seconds": 3.0}).exit(2))
        self.expect_outcome(result=FAILURE, state_string="make failed: kernel/sched/ext.o (failure)")
        self.expect_property("make_warnings", 1)
        self.expect_property("make_errors", 1)
        return self.run_step()

    def test_failure_without_target_uses_error(self) -> None:
        self.setup_ktstr_step(KernelMake())
        self.expect_commands(self.make().answer({"ok": False, "errors": [
            {"kind": "make-failed", "message": "make -j2 KCFLAGS=-Wno-error failed"}]}).exit(1))
        self.expect_outcome(
            result=FAILURE, state_string="make failed: make -j2 KCFLAGS=-Wno-error failed (failure)"
        )
        return self.run_step()

    def test_lost_reservation_is_the_summary(self) -> None:
        # make was killed because its holder died: that, not "make failed", is the story.
        self.setup_ktstr_step(KernelMake())
        self.expect_commands(self.make().answer({"ok": False, "errors": [
            {"kind": "reservation-lost", "message": "reservation lost: holder pid 4242 died"}],
            "jobs": 2, "warnings": 0, "errors_count": 0, "failed_target": None}).exit(1))
        self.expect_outcome(
            result=FAILURE, state_string="reservation lost: holder pid 4242 died (failure)")
        return self.run_step()

    # The status line from progress events: tests/test_steps_log_streams.py.

    def test_interrupt_cancels_make(self) -> None:
        step = self.setup_ktstr_step(KernelMake())
        self.interrupt_nth_remote_command(0)
        exp = self.make().stderr("  CC      kernel/fork.o\n").exit(-1)
        exp.interrupted = True
        self.expect_commands(exp)
        self.expect_outcome(result=CANCELLED, state_string="make interrupted (cancelled)")
        # TERM first, KILL only after sigtermTime: ktstr-ci kills make's process group itself.
        self.assertEqual(step.sigtermTime, 30)
        return self.run_step()


class TestValidate(KtstrStepMixin, unittest.TestCase):
    def validate(self):
        return ktstr("phase", "validate", "--state", STATE, "--json")

    def test_valid(self) -> None:
        self.setup_ktstr_step(Validate())
        self.expect_commands(self.validate().answer({"missing": []}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string="config valid")
        return self.run_step()

    def test_missing_options_listed(self) -> None:
        self.setup_ktstr_step(Validate())
        self.expect_commands(self.validate().answer({"ok": False, "missing": [
            {"option": "CONFIG_SCHED_CLASS_EXT", "hint": "needs CONFIG_BPF_JIT"},
            {"option": "CONFIG_DEBUG_INFO_BTF", "hint": "install pahole (dwarves)"}]}).exit(1))
        self.expect_outcome(
            result=FAILURE,
            state_string="missing CONFIG_SCHED_CLASS_EXT, CONFIG_DEBUG_INFO_BTF (failure)",
        )
        self.expect_property("config_missing", ["CONFIG_SCHED_CLASS_EXT", "CONFIG_DEBUG_INFO_BTF"])
        return self.run_step()

    def test_missing_with_exit_zero_still_fails_and_logs_hints(self) -> None:
        self.setup_ktstr_step(Validate())
        self.expect_commands(self.validate().answer({"missing": [
            {"option": "CONFIG_BPF_SYSCALL", "hint": "enable BPF"}]}).exit(0))
        self.expect_outcome(result=FAILURE, state_string="missing CONFIG_BPF_SYSCALL (failure)")
        self.expect_log_file("missing-options", "CONFIG_BPF_SYSCALL: enable BPF\n")
        return self.run_step()


class TestCompileCommands(KtstrStepMixin, unittest.TestCase):
    def cc(self):
        return ktstr("phase", "compile-commands", "--state", STATE, "--json")

    def test_generated(self) -> None:
        self.setup_ktstr_step(CompileCommands())
        self.expect_commands(self.cc().answer(
            {"path": f"{TREE}/compile_commands.json", "entries": 2612}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string="compile_commands.json: 2612 entries")
        self.expect_property("compile_commands", f"{TREE}/compile_commands.json")
        return self.run_step()

    def test_failure_aborts(self) -> None:
        step = self.setup_ktstr_step(CompileCommands())
        self.expect_commands(self.cc().answer({"ok": False, "errors": [
            {"kind": "make-failed", "message": "make compile_commands.json failed"}]}).exit(1))
        self.expect_outcome(
            result=FAILURE,
            state_string="compile-commands failed: make compile_commands.json failed (failure)",
        )
        self.assertTrue(step.haltOnFailure)
        return self.run_step()


class TestCacheStore(KtstrStepMixin, unittest.TestCase):
    def store(self):
        return ktstr("phase", "store", "--state", STATE, "--json")

    def test_cached_sets_properties(self) -> None:
        self.setup_ktstr_step(CacheStore())
        self.expect_commands(self.store().answer({
            "outcome": "cached", "cache_key": KEY, "entry_dir": f"/cache/{KEY}",
            "image_path": f"/cache/{KEY}/bzImage", "config_hash": "deadbeef"}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string=f"cached {KEY}")
        self.expect_property("kernel_outcome", "cached", "CacheStore")
        self.expect_property("cache_key", KEY)
        self.expect_property("image_path", f"/cache/{KEY}/bzImage")
        self.expect_property("config_hash", "deadbeef")
        self.expect_property("entry_dir", f"/cache/{KEY}")
        return self.run_step()

    def test_dirty_not_cached_says_why(self) -> None:
        self.setup_ktstr_step(CacheStore())
        self.expect_commands(self.store().answer({
            "outcome": "dirty-not-cached", "cache_key": KEY, "entry_dir": None,
            "image_path": f"{TREE}/arch/x86/boot/bzImage", "config_hash": "deadbeef"}).exit(0))
        self.expect_outcome(
            result=SUCCESS,
            state_string="not cached (dirty-not-cached): working tree has uncommitted changes",
        )
        self.expect_property("kernel_outcome", "dirty-not-cached")
        self.expect_property("image_path", f"{TREE}/arch/x86/boot/bzImage")
        self.expect_no_property("entry_dir")
        return self.run_step()

    def test_lost_reservation_fails_and_stores_nothing(self) -> None:
        self.setup_ktstr_step(CacheStore())
        self.expect_commands(self.store().answer({"ok": False, "errors": [
            {"kind": "reservation-lost", "message": "reservation lost: holder pid 4242 died"}],
            "outcome": "failed", "cache_key": KEY, "entry_dir": None}).exit(1))
        self.expect_outcome(
            result=FAILURE, state_string="reservation lost: holder pid 4242 died (failure)")
        self.expect_no_property("entry_dir")
        return self.run_step()

    def test_store_failed_warns(self) -> None:
        self.setup_ktstr_step(CacheStore())
        self.expect_commands(self.store().answer({
            "outcome": "store-failed", "cache_key": KEY, "entry_dir": None,
            "image_path": f"{TREE}/arch/x86/boot/bzImage", "config_hash": "deadbeef",
            "warnings": ["cache store failed: No space left on device"]}).exit(0))
        self.expect_outcome(
            result=WARNINGS,
            state_string="cache store failed: No space left on device (warnings)",
        )
        self.expect_property("kernel_outcome", "store-failed")
        return self.run_step()
