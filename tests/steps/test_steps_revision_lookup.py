"""RevisionLookup: the commit and the profile looked up before any checkout."""

from __future__ import annotations

from buildbot.process.properties import Property
from buildbot.process.results import FAILURE, SKIPPED, SUCCESS
from twisted.trial import unittest

from ktstr_steps.buildsteps import RevisionLookup
from tests.support.steps_harness import STATE, TREE, KtstrStepMixin, ktstr

REV = "0123456789abcdef0123456789abcdef01234567"
KEY = "local-0123456-x86_64-kcc0bd848c-base-tinyconfig"


def lookup(*extra: str):
    return ktstr("phase", "lookup", "--state", STATE, "--revision", REV, "--profile", "tiny",
                 "--tree", TREE, *extra, "--json")


class TestRevisionLookup(KtstrStepMixin, unittest.TestCase):
    def test_hit_says_key_and_that_no_checkout_is_needed(self) -> None:
        self.setup_ktstr_step(RevisionLookup(profile="tiny"), revision=REV)
        self.expect_commands(lookup().answer({
            "cache_key": KEY, "hit": True, "entry_dir": f"/cache/{KEY}", "dirty": False,
            "is_git": True, "git_hash": REV[:7], "outcome": "cache-hit"}).exit(0))
        self.expect_outcome(result=SUCCESS,
                            state_string=f"cache hit {KEY} ({REV[:12]}, no checkout)")
        self.expect_property("kernel_outcome", "cache-hit")
        self.expect_property("hit_before_checkout", True)
        self.expect_property("cache_key", KEY)
        self.expect_property("entry_dir", f"/cache/{KEY}")
        return self.run_step()

    def test_miss_names_the_key_it_tried(self) -> None:
        self.setup_ktstr_step(RevisionLookup(profile="tiny"), revision=REV)
        self.expect_commands(lookup().answer({
            "cache_key": KEY, "hit": False, "entry_dir": None, "dirty": False, "is_git": True,
            "git_hash": REV[:7], "outcome": None}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string=f"cache miss {KEY} ({REV[:12]})")
        self.expect_property("cache_key", KEY)
        self.expect_no_property("kernel_outcome")
        self.expect_no_property("hit_before_checkout")
        return self.run_step()

    def test_branch_tip_build_is_skipped(self) -> None:
        self.setup_ktstr_step(RevisionLookup(profile="tiny"), revision="HEAD")
        self.expect_outcome(result=SKIPPED,
                            state_string="no commit id: looked up after checkout (skipped)")
        self.expect_no_property("cache_key")
        return self.run_step()

    def test_revisionless_build_is_skipped(self) -> None:
        self.setup_ktstr_step(RevisionLookup(profile="tiny"))
        self.expect_outcome(result=SKIPPED,
                            state_string="no commit id: looked up after checkout (skipped)")
        return self.run_step()

    def test_forced_build_is_skipped(self) -> None:
        self.setup_ktstr_step(RevisionLookup(profile="tiny", force=Property("force")),
                              revision=REV, force=True)
        self.expect_outcome(result=SKIPPED,
                            state_string="forced: no lookup before checkout (skipped)")
        return self.run_step()

    def test_a_failed_lookup_fails_with_the_commands_word(self) -> None:
        self.setup_ktstr_step(RevisionLookup(profile="tiny"), revision=REV)
        self.expect_commands(lookup().answer({"ok": False, "errors": [
            {"kind": "profile", "message": "unknown profile 'tiny'"}]}).exit(1))
        self.expect_outcome(
            result=FAILURE, state_string="revision-lookup failed: unknown profile 'tiny' (failure)")
        return self.run_step()

    def test_without_tree_store_no_tree_is_passed(self) -> None:
        self.setup_ktstr_step(RevisionLookup(profile="tiny"), revision=REV, tree_store=None)
        self.build.properties.setProperty("tree_store", None, "Test")
        self.expect_commands(ktstr("phase", "lookup", "--state", STATE, "--revision", REV,
                                   "--profile", "tiny", "--json").answer({
            "cache_key": KEY, "hit": False}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string=f"cache miss {KEY} ({REV[:12]})")
        return self.run_step()
