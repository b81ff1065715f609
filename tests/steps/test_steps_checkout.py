"""Checkout: Buildbot's Git step into the host's per-branch tree."""

from __future__ import annotations

from unittest import mock

from buildbot.process.results import FAILURE, SUCCESS
from buildbot.test.steps import ExpectListdir, ExpectShell, ExpectStat
from twisted.trial import unittest

from ktstr_steps.buildsteps import KernelCheckout
from tests.support.steps_harness import TREE, KtstrStepMixin

REPO = "/srv/ci/var/linux.git"
REV = "f6e5d4c3b2a1f6e5d4c3b2a1f6e5d4c3b2a1f6e5"


def git(*argv: str) -> ExpectShell:
    return ExpectShell(workdir=TREE, command=["git", *argv], log_environ=False)


class TestKernelCheckout(KtstrStepMixin, unittest.TestCase):
    def test_incremental_update_in_branch_tree(self) -> None:
        self.setup_ktstr_step(KernelCheckout(repourl=REPO))
        self.build.sources[""] = mock.Mock(branch="main", revision=REV, patch=None, changes=[])
        self.expect_commands(
            git("--version").stdout("git version 2.39.5").exit(0),
            ExpectStat(file=f"{TREE}/.buildbot-patched", log_environ=False).exit(1),
            ExpectListdir(dir=TREE).files([".git", "Makefile"]).exit(0),
            # Revision not in the tree yet: fetch the branch, check the revision out.
            git("cat-file", "-e", REV).exit(1),
            git("fetch", "-f", "--progress", REPO, "main").exit(0),
            git("checkout", "-f", REV).exit(0),
            git("checkout", "-B", "main").exit(0),
            git("rev-parse", "HEAD").stdout(REV + "\n").exit(0),
        )
        self.expect_outcome(result=SUCCESS, state_string="update")
        self.expect_property("got_revision", REV, "KernelCheckout")
        return self.run_step()

    def test_no_tree_store_fails_before_git(self) -> None:
        self.setup_ktstr_step(KernelCheckout(repourl=REPO), tree_store=None)
        self.expect_outcome(
            result=FAILURE,
            state_string="worker property tree_store is not set: no place for the per-branch "
            "tree (failure)",
        )
        return self.run_step()

    def test_defaults(self) -> None:
        step = KernelCheckout(repourl=REPO)
        self.assertEqual(step.mode, "incremental")
        self.assertTrue(step.haltOnFailure)
        self.assertFalse(step.logEnviron)
