"""Checkout: the host's per-branch tree, checked out by ``trees prepare`` (Git for try patches)."""

from __future__ import annotations

import json
from unittest import mock

from buildbot.process import remotetransfer
from buildbot.process.results import FAILURE, SUCCESS
from buildbot.test.steps import (
    ExpectDownloadFile,
    ExpectListdir,
    ExpectRemoteRef,
    ExpectShell,
    ExpectStat,
)
from twisted.trial import unittest

from ktstr_steps.buildsteps import KernelCheckout, TryCheckout
from tests.support.steps_harness import TREE, KtstrStepMixin, answer

REPO = "/srv/ci/var/linux.git"
REV = "f6e5d4c3b2a1f6e5d4c3b2a1f6e5d4c3b2a1f6e5"


def git(*argv: str) -> ExpectShell:
    return ExpectShell(workdir=TREE, command=["git", *argv], log_environ=False)


def prepare(*extra: str, branch: str = "main", rev: str = REV) -> ExpectShell:
    """The ``trees prepare`` run before git, in the builder's own workdir."""
    return ExpectShell(
        workdir="build",
        command=["ktstr-ci", "trees", "prepare", "--tree", TREE, "--repourl", REPO,
                 "--branch", branch, "--revision", rev, *extra, "--json"],
        log_environ=False,
    )


CHECKED_OUT = {"commit": REV, "branch": "main", "cleaned_patch": False, "seconds": 0.31}


def prepared(action: str = "existing", **fields: object) -> str:
    return answer({"tree": TREE, "mirror": "/srv/trees/.git-objects/linux-1.git", "commit": REV,
                   "action": action, "seed": None, "skipped": [], "removed": [],
                   "checkout": CHECKED_OUT, **fields})


GIT_START = (
    git("--version").stdout("git version 2.39.5").exit(0),
    ExpectStat(file=f"{TREE}/.buildbot-patched", log_environ=False).exit(1),
    ExpectListdir(dir=TREE).files([".git", "Makefile"]).exit(0),
)


class TestKernelCheckout(KtstrStepMixin, unittest.TestCase):
    def branch_build(self, step: KernelCheckout | None = None, revision: str | None = REV,
                     patch: tuple | None = None) -> None:
        """The step in a build of branch main at ``revision``, with ``patch`` on top."""
        self.setup_ktstr_step(step or KernelCheckout(repourl=REPO))
        self.build.sources[""] = mock.Mock(branch="main", revision=revision, patch=patch,
                                           changes=[])

    def test_one_worker_command_prepares_and_checks_out(self) -> None:
        self.branch_build()
        # No git command of the step's own: trees prepare checked the revision out.
        self.expect_commands(prepare("--checkout").stdout(prepared()).exit(0))
        self.expect_outcome(result=SUCCESS, state_string="update")
        self.expect_property("got_revision", REV, "KernelCheckout")
        return self.run_step()

    def test_got_revision_is_what_was_checked_out(self) -> None:
        # A forced build names no revision: the branch head the mirror fetched is built.
        self.branch_build(revision=None)
        head = "0123456789abcdef0123456789abcdef01234567"
        self.expect_commands(
            ExpectShell(workdir="build", log_environ=False, command=[
                "ktstr-ci", "trees", "prepare", "--tree", TREE, "--repourl", REPO,
                "--branch", "main", "--checkout", "--json"])
            .stdout(prepared(commit=head, checkout={**CHECKED_OUT, "commit": head})).exit(0))
        self.expect_outcome(result=SUCCESS, state_string="update")
        self.expect_property("got_revision", head, "KernelCheckout")
        return self.run_step()

    def test_an_answer_without_a_checkout_fails(self) -> None:
        self.branch_build()
        self.expect_commands(prepare("--checkout").stdout(prepared(checkout=None)).exit(0))
        self.expect_outcome(result=FAILURE,
                            state_string="ktstr-ci trees prepare checked nothing out (failure)")
        return self.run_step()

    def test_a_removed_try_patch_is_summarised(self) -> None:
        self.branch_build()
        self.expect_commands(prepare("--checkout").stdout(
            prepared(checkout={**CHECKED_OUT, "cleaned_patch": True})).exit(0))
        self.expect_outcome(result=SUCCESS, state_string="update, try patch removed")
        return self.run_step()

    def test_a_try_patch_goes_through_buildbots_git_step(self) -> None:
        patch = (1, "--- a/Makefile\n+++ b/Makefile\n", None)
        self.branch_build(TryCheckout(repourl=REPO), patch=patch)
        self.expect_commands(
            prepare().stdout(prepared(checkout=None)).exit(0),
            *GIT_START,
            git("cat-file", "-e", REV).exit(0),
            git("checkout", "-f", REV).exit(0),
            git("checkout", "-B", "main").exit(0),
            ExpectDownloadFile(blocksize=32768, maxsize=None, reader=ExpectRemoteRef(remotetransfer.StringFileReader),
                               workerdest=".buildbot-diff", workdir=TREE, mode=None).exit(0),
            ExpectDownloadFile(blocksize=32768, maxsize=None, reader=ExpectRemoteRef(remotetransfer.StringFileReader),
                               workerdest=".buildbot-patched", workdir=TREE, mode=None).exit(0),
            git("update-index", "--refresh").exit(0),
            ExpectShell(workdir=TREE, command=["git", "apply", "--index", "-p", "1"],
                        log_environ=False, initial_stdin=patch[1])
            .stdout("error: patch failed: Makefile:1\n").exit(1),
        )
        self.expect_outcome(
            result=FAILURE,
            state_string=f"try patch does not apply to main@{REV[:12]}: "
            "error: patch failed: Makefile:1 (failure)")
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

    def test_defaults_prepare_the_tree(self) -> None:
        self.assertTrue(KernelCheckout(repourl=REPO).prepare)


SEED = {"path": "/srv/trees/kernel/main-1", "branch": "main", "commit": "a1b2c3d4" + "0" * 32,
        "why": "ancestor of the new commit, 1 commit behind", "last_built_text": "2026-12-01 06:40",
        "ahead": 1, "behind": 0}
TOPIC = "topic"
TOPIC_TREE = TREE  # the harness renders the tree from the build's branch property


class TestTreePreparation(KtstrStepMixin, unittest.TestCase):
    def source(self, branch: str = "main") -> None:
        self.build.sources[""] = mock.Mock(branch=branch, revision=REV, patch=None, changes=[])

    def test_seeded_tree_is_named_in_the_log_and_summary(self) -> None:
        self.setup_ktstr_step(KernelCheckout(repourl=REPO))
        self.source()
        self.expect_commands(
            prepare("--checkout").stdout(prepared("seeded", seed=SEED))
            .stderr("ktstr-ci: seeded from trees/kernel/main (a1b2c3d, ancestor of the new commit, "
                    "1 commit behind, built 2026-12-01 06:40); make rebuilds only what changed\n")
            .exit(0),
        )
        self.expect_outcome(result=SUCCESS, state_string="seeded from main (a1b2c3d)")
        self.expect_log_file_stderr(
            "tree", "ktstr-ci: seeded from trees/kernel/main (a1b2c3d, ancestor of the new commit, "
            "1 commit behind, built 2026-12-01 06:40); make rebuilds only what changed\n")
        self.expect_property("tree_seed", SEED["path"], "KernelCheckout")
        self.expect_property("tree_action", "seeded", "KernelCheckout")
        return self.run_step()

    def test_failed_preparation_stops_before_git(self) -> None:
        self.setup_ktstr_step(KernelCheckout(repourl=REPO))
        self.source()
        err = {"ok": False, "errors": [{"kind": "git-ref-not-found",
                                        "message": f"revision {REV} is not in {REPO}"}]}
        self.expect_commands(prepare("--checkout").stdout(json.dumps(err) + "\n").exit(1))
        self.expect_outcome(
            result=FAILURE,
            state_string=f"preparing the tree failed: revision {REV} is not in {REPO} (failure)")
        return self.run_step()

    def test_no_json_fails_clearly(self) -> None:
        self.setup_ktstr_step(KernelCheckout(repourl=REPO))
        self.source()
        self.expect_commands(prepare("--checkout").stderr("Traceback\n").exit(1))
        self.expect_outcome(result=FAILURE,
                            state_string="ktstr-ci trees prepare printed no JSON (failure)")
        return self.run_step()

    def test_limits_come_from_worker_properties_and_pruning_is_summarised(self) -> None:
        self.setup_ktstr_step(KernelCheckout(repourl=REPO), tree_max_trees=3, tree_max_gb=40.5)
        self.source()
        removed = [{"path": "/srv/trees/kernel/old-1", "reason": "builder kernel has 4 trees, "
                    "more than max_trees = 3"}]
        self.expect_commands(
            prepare("--max-trees", "3", "--max-gb", "40.5", "--checkout")
            .stdout(prepared("fresh", removed=removed)).exit(0),
        )
        self.expect_outcome(result=SUCCESS, state_string="fresh tree, pruned 1 tree")
        return self.run_step()

    def test_prepare_false_leaves_the_tree_to_git(self) -> None:
        self.setup_ktstr_step(KernelCheckout(repourl=REPO, prepare=False))
        self.source()
        self.expect_commands(
            *GIT_START,
            git("cat-file", "-e", REV).exit(0),
            git("checkout", "-f", REV).exit(0),
            git("checkout", "-B", "main").exit(0),
            git("rev-parse", "HEAD").stdout(REV + "\n").exit(0),
        )
        self.expect_outcome(result=SUCCESS, state_string="update")
        return self.run_step()

    def test_bad_options_are_config_errors(self) -> None:
        with self.assertRaisesConfigError("prepare=True needs mode='incremental'"):
            KernelCheckout(repourl=REPO, mode="full", method="fresh")
        with self.assertRaisesConfigError("argument prepare must be True or False"):
            KernelCheckout(repourl=REPO, prepare="yes")
        with self.assertRaisesConfigError("argument max_trees must be"):
            KernelCheckout(repourl=REPO, max_trees="3")
        with self.assertRaisesConfigError("argument ktstr_ci must not be empty"):
            KernelCheckout(repourl=REPO, ktstr_ci="")
