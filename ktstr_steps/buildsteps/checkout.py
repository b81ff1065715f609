"""Checkout: the per-branch tree shared by the host's workers, checked out by ``trees prepare``.

The step runs ``ktstr-ci trees prepare`` on the worker (its output is the
step's ``tree`` log): the branch is fetched into the host's shared git mirror,
a branch new to the builder gets a tree seeded from the builder's nearest
built tree (or an empty one borrowing the mirror's objects), the commit is
checked out, and the tree store is pruned to its limits. One worker command
does what the Git step does in seven round trips (version, two stats,
``cat-file``, two checkouts, ``rev-parse``): 0.4-0.5 s of every build here.
The Git step itself still runs where a try patch is applied on top, or with
``prepare=False``.

:class:`KernelCheckout` fetches the branch into its tree; :class:`TryCheckout`
is the same step for try builds, whose patch Buildbot's Git step applies on top
of the branch (``git apply --index``), and says so when the patch does not apply.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from buildbot import config
from buildbot.interfaces import IRenderable
from buildbot.process import buildstep, logobserver, remotecommand
from buildbot.process.properties import Property
from buildbot.process.results import CANCELLED, FAILURE, SUCCESS
from buildbot.steps.source.git import Git

from ktstr_steps.buildsteps.base import (
    check_renderable_or,
    first_error,
    one_line,
    parse_json_object,
    tree_path,
)
from ktstr_steps.buildsteps.sourcelock import check_tree

# Worker properties from [paths] max_trees / max_gb; absent = no limit.
MAX_TREES = Property("tree_max_trees", default=0)
MAX_GB = Property("tree_max_gb", default=0)


class KernelCheckout(Git):
    """``Git(mode='incremental')`` into ``<tree_store>/<builder>/<branch dir>`` (an absolute workdir).

    Incremental keeps the previous build's objects, so a rebuild of the branch on
    any LLC group of the host is an incremental make. The source lock is taken
    before this step, so neither the preparation nor the fetch ever rewrites a
    tree that is being compiled. ``prepare=False`` leaves the tree to git alone.
    """

    name = "checkout"
    # trees prepare checks the commit out itself unless a patch goes on top (Git applies it).
    checkout_in_prepare = True
    # Kept apart from workdir: an unset workdir silently falls back to the builder's.
    renderables = ["tree", "ktstr_ci", "max_trees", "max_gb"]

    def __init__(self, *, repourl: str | IRenderable, tree: str | IRenderable = tree_path,
                 ktstr_ci: str | IRenderable = "ktstr-ci", prepare: bool = True,
                 max_trees: int | IRenderable = MAX_TREES,
                 max_gb: float | IRenderable = MAX_GB, **kwargs: Any) -> None:
        kwargs.setdefault("mode", "incremental")
        kwargs.setdefault("logEnviron", False)
        kwargs.setdefault("haltOnFailure", True)
        check_renderable_or(ktstr_ci, str, type(self), "ktstr_ci")
        if ktstr_ci == "":
            config.error(f"{type(self).__name__} argument ktstr_ci must not be empty")
        check_renderable_or(max_trees, int, type(self), "max_trees")
        check_renderable_or(max_gb, (int, float), type(self), "max_gb")
        if not isinstance(prepare, bool):
            config.error(f"{type(self).__name__} argument prepare must be True or False")
        if kwargs["mode"] != "incremental" and prepare:
            config.error(f"{type(self).__name__}: prepare=True needs mode='incremental' "
                         "(a full mode would throw the seeded build outputs away)")
        self.tree = tree
        self.ktstr_ci = ktstr_ci
        self.prepare = prepare
        self.max_trees = max_trees
        self.max_gb = max_gb
        self.prepared: dict[str, Any] | None = None
        self.checks_out = False  # set per build in run()
        super().__init__(repourl=repourl, workdir=tree, **kwargs)

    async def run(self) -> Any:
        problem = check_tree(self.tree)
        if problem:
            self.descriptionDone = [problem]
            return FAILURE
        ss = self.build.getSourceStamp(self.codebase)
        self.checks_out = (self.prepare and self.checkout_in_prepare and not self.alwaysUseLatest
                           and ss is not None and not ss.patch)
        if self.prepare:
            failed = await self.prepare_tree()
            if failed is not None:
                return failed
        if self.checks_out:
            return self.checked_out(self.prepared or {})
        result = await super().run()
        if result == SUCCESS and self.prepared:
            self.descriptionDone = [self.prepared_summary(self.prepared)]
        return result

    def prepare_argv(self) -> list[str]:
        ss = self.build.getSourceStamp(self.codebase)
        branch = (ss.branch if ss else None) or self.branch
        revision = ss.revision if ss else None
        argv = [self.ktstr_ci, "trees", "prepare", "--tree", str(self.tree),
                "--repourl", str(self.repourl)]
        if branch and branch != "HEAD":
            argv += ["--branch", str(branch)]
        if revision:
            argv += ["--revision", str(revision)]
        if self.max_trees:
            argv += ["--max-trees", str(int(self.max_trees))]
        if self.max_gb:
            argv += ["--max-gb", f"{float(self.max_gb):g}"]
        if self.checks_out:
            argv.append("--checkout")
        return [*argv, "--json"]

    async def prepare_tree(self) -> int | None:
        """Run ``trees prepare``; None when git may go on, else the step's result."""
        log = await self.addLog("tree")
        workdir = self.build.workdir
        if callable(workdir):
            workdir = workdir(self.build.sources)
        cmd = remotecommand.RemoteShellCommand(
            workdir, self.prepare_argv(), env=dict(self.env or {}), collectStdout=True,
            logEnviron=False, interruptSignal="KILL")
        cmd.useLog(log, False, "stdio")
        await self.runCommand(cmd)
        if self.stopped or cmd.results() == CANCELLED:
            self.descriptionDone = ["checkout interrupted"]
            return CANCELLED
        data, problem = parse_json_object(cmd.stdout)
        if data is None:
            self.descriptionDone = [f"ktstr-ci trees prepare printed {problem}"]
            return FAILURE
        if cmd.results() != SUCCESS or data.get("ok") is False:
            why = first_error(data) or "no error message"
            self.descriptionDone = [f"preparing the tree failed: {why}"]
            return FAILURE
        self.prepared = data
        for line in self.prepared_lines(data):
            await log.addHeader(line + "\n")
        seed = data.get("seed") or {}
        self.setProperty("tree_seed", seed.get("path"), type(self).__name__)
        self.setProperty("tree_action", data.get("action"), type(self).__name__)
        return None

    def checked_out(self, data: dict[str, Any]) -> int:
        """The result of a checkout ``trees prepare`` did; got_revision as the Git step sets it."""
        checkout = data.get("checkout") or {}
        commit = checkout.get("commit")
        if not isinstance(commit, str) or not commit:
            self.descriptionDone = ["ktstr-ci trees prepare checked nothing out"]
            return FAILURE
        self.updateSourceProperty("got_revision", commit)
        self.descriptionDone = [self.prepared_summary(data)]
        return SUCCESS

    @staticmethod
    def prepared_lines(data: dict[str, Any]) -> list[str]:
        """What the ``tree`` log ends with: the decision, in words."""
        lines = [f"tree: {data.get('action')} ({data.get('tree')})"]
        seed = data.get("seed")
        if seed:
            lines.append(f"seeded from {seed.get('path')} at {str(seed.get('commit'))[:12]}: "
                         f"{seed.get('why')}, built {seed.get('last_built_text')}")
        for removed in data.get("removed") or []:
            lines.append(f"removed {removed.get('path')}: {removed.get('reason')}")
        return lines

    @staticmethod
    def prepared_summary(data: dict[str, Any]) -> str:
        seed = data.get("seed")
        text = "update"
        if seed:
            name = seed.get("branch") or str(seed.get("path", "")).rsplit("/", 1)[-1]
            text = f"seeded from {name} ({str(seed.get('commit'))[:7]})"
        elif data.get("action") == "fresh":
            text = "fresh tree"
        if (data.get("checkout") or {}).get("cleaned_patch"):
            text += ", try patch removed"
        removed = data.get("removed") or []
        if removed:
            text += f", pruned {len(removed)} tree{'s' * (len(removed) != 1)}"
        return one_line(text)


class TryCheckout(KernelCheckout):
    """KernelCheckout whose failure to apply the try patch is named as such.

    Buildbot's Git step only says "update (failure)" when ``git apply`` refuses the
    patch; a developer sending a try needs to read that the patch does not apply
    to the branch, and git's first complaint, without opening the log.
    """

    checkout_in_prepare = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.git_errors: list[str] = []
        self.addLogObserver("stdio", logobserver.LineConsumerLogObserver(self._consume))

    def _consume(self) -> Generator[None, tuple[str, str], None]:
        while True:
            _stream, line = yield
            if line.startswith("error:") and len(self.git_errors) < 5:
                self.git_errors.append(line.strip())

    async def applyPatch(self, patch: Any) -> Any:
        try:
            return await super().applyPatch(patch)
        except buildstep.BuildStepFailed:
            # The observer sees a line only once the log is flushed.
            await self.stdio_log.flush()
            rev = f"@{self.revision[:12]}" if self.revision else ""
            why = f": {self.git_errors[0]}" if self.git_errors else ""
            self.descriptionDone = [f"try patch does not apply to {self.branch}{rev}{why}"]
            raise
