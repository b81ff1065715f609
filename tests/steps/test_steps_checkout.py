"""Checkout: Buildbot's Git step into the host's per-branch tree."""

from __future__ import annotations

import json
from unittest import mock

from buildbot.process.results import FAILURE, SUCCESS
from buildbot.test.steps import ExpectListdir, ExpectShell, ExpectStat
from twisted.trial import unittest

from ktstr_steps.buildsteps import KernelCheckout
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


def prepared(action: str = "existing", **fields: object) -> str:
    return answer({"tree": TREE, "mirror": "/srv/trees/.git-objects/linux-1.git", "commit": REV,
                   "action": action, "seed": None, "skipped": [], "removed": [], **fields})


GIT_START = (
    git("--version").stdout("git version 2.39.5").exit(0),
    ExpectStat(file=f"{TREE}/.buildbot-patched", log_environ=False).exit(1),
    ExpectListdir(dir=TREE).files([".git", "Makefile"]).exit(0),
)


class TestKernelCheckout(KtstrStepMixin, unittest.TestCase):
    def test_incremental_update_in_branch_tree(self) -> None:
        self.setup_ktstr_step(KernelCheckout(repourl=REPO))
        self.build.sources[""] = mock.Mock(branch="main", revision=REV, patch=None, changes=[])
        self.expect_commands(
            prepare().stdout(prepared()).exit(0),
            *GIT_START,
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
            prepare().stdout(prepared("seeded", seed=SEED))
            .stderr("ktstr-ci: seeded from trees/kernel/main (a1b2c3d, ancestor of the new commit, "
                    "1 commit behind, built 2026-12-01 06:40); make rebuilds only what changed\n")
            .exit(0),
            *GIT_START,
            # The mirror already holds the revision: git fetches nothing.
            git("cat-file", "-e", REV).exit(0),
            git("checkout", "-f", REV).exit(0),
            git("checkout", "-B", "main").exit(0),
            git("rev-parse", "HEAD").stdout(REV + "\n").exit(0),
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
        self.expect_commands(prepare().stdout(json.dumps(err) + "\n").exit(1))
        self.expect_outcome(
            result=FAILURE,
            state_string=f"preparing the tree failed: revision {REV} is not in {REPO} (failure)")
        return self.run_step()

    def test_no_json_fails_clearly(self) -> None:
        self.setup_ktstr_step(KernelCheckout(repourl=REPO))
        self.source()
        self.expect_commands(prepare().stderr("Traceback\n").exit(1))
        self.expect_outcome(result=FAILURE,
                            state_string="ktstr-ci trees prepare printed no JSON (failure)")
        return self.run_step()

    def test_limits_come_from_worker_properties_and_pruning_is_summarised(self) -> None:
        self.setup_ktstr_step(KernelCheckout(repourl=REPO), tree_max_trees=3, tree_max_gb=40.5)
        self.source()
        removed = [{"path": "/srv/trees/kernel/old-1", "reason": "builder kernel has 4 trees, "
                    "more than max_trees = 3"}]
        self.expect_commands(
            prepare("--max-trees", "3", "--max-gb", "40.5")
            .stdout(prepared("fresh", removed=removed)).exit(0),
            *GIT_START,
            git("cat-file", "-e", REV).exit(0),
            git("checkout", "-f", REV).exit(0),
            git("checkout", "-B", "main").exit(0),
            git("rev-parse", "HEAD").stdout(REV + "\n").exit(0),
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
