"""The step-test harness: a scripted worker for ktstr-ci steps (Buildbot's TestBuildStepMixin)."""

from __future__ import annotations

import json
import warnings
from typing import Any

from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import ExpectShell, TestBuildStepMixin
from buildbot.test.util.config import ConfigErrorsMixin
from twisted.internet import defer

from ktstr_steps.buildsteps.base import RESULT_LOG, branch_dir, result_file_name

# Importing buildbot.test turns every warning into an error (buildbot/test/__init__.py
# calls warnings.filterwarnings("error"));
# third-party DeprecationWarnings must not fail these tests under trial or -p no:warnings.
warnings.filterwarnings("default", category=DeprecationWarning)

HOLDER = "ktstr-kernel-7"


TREE = f"/srv/trees/kernel/{branch_dir('main')}"


STATE = "ktstr-state.json"


BUILD_PROPS: dict[str, Any] = {
    "buildername": "kernel",
    "buildnumber": 7,
    "branch": "main",
    "tree_store": "/srv/trees",
}


class KtstrExpect(ExpectShell):
    def answer(self, obj: dict[str, Any]) -> KtstrExpect:
        """The command's JSON answer, as the worker sends its result file back."""
        return self.log(RESULT_LOG, stdout=answer(obj))


def ktstr(*argv: str, ktstr_ci: str = "ktstr-ci", **kwargs: Any) -> KtstrExpect:
    """The ExpectShell of one ktstr-ci run: argv list, builder workdir, no environment dump,
    the answer in the subcommand's result file (sent back as the ``result`` log)."""
    result = result_file_name(tuple(argv[:2]))
    return KtstrExpect(
        workdir="wkdir",
        command=[ktstr_ci, "--result-file", result, *argv],
        log_environ=False,
        logfiles={RESULT_LOG: result},
        **kwargs,
    )


def answer(obj: dict[str, Any]) -> str:
    return json.dumps(obj) + "\n"


class KtstrStepMixin(TestBuildStepMixin, TestReactorMixin, ConfigErrorsMixin):
    """setUp for a trial TestCase that runs ktstr-ci steps against a scripted worker."""

    def setUp(self) -> defer.Deferred:
        self.setup_test_reactor()
        return self.setup_test_build_step()

    def setup_ktstr_step(self, step: Any, **props: Any) -> Any:
        step = self.setup_step(step)
        for name, value in {**BUILD_PROPS, **props}.items():
            if value is not None:
                self.build.setProperty(name, value, "Test")
        return step


class FakeRecords:
    """The records service as the steps find it by name: keeps rows and matrix runs, or fails."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.rows: list[dict[str, Any]] = []
        self.started: list[dict[str, Any]] = []
        self.finished: list[tuple[int, Any]] = []
        self.fail = fail
        # What recent_branches answers, the ``since`` it was asked with, what
        # matrix_changes answers.
        self.built: list[tuple[str, str]] = []
        self.since: list[float] = []
        self.changes: dict[str, Any] = {"previous": None, "broke": [], "fixed": []}

    def matrix_changes(self, run_id: int) -> defer.Deferred[dict[str, Any]]:
        return defer.succeed(self.changes)

    def recent_branches(self, since: float) -> defer.Deferred[list[tuple[str, str]]]:
        self.since.append(since)
        return defer.succeed(list(self.built))

    def record(self, row: dict[str, Any]) -> defer.Deferred[int]:
        if self.fail is not None:
            return defer.fail(self.fail)
        self.rows.append(row)
        return defer.succeed(len(self.rows))

    def start_matrix_run(self, **kwargs: Any) -> defer.Deferred[int]:
        if self.fail is not None:
            return defer.fail(self.fail)
        self.started.append(kwargs)
        return defer.succeed(5)

    def finish_matrix_run(self, run_id: int, *, totals: Any = None) -> defer.Deferred[dict]:
        if self.fail is not None:
            return defer.fail(self.fail)
        self.finished.append((run_id, totals))
        return defer.succeed({"cells": 4, "built": 2, "cache_hits": 1, "failed": 1})
