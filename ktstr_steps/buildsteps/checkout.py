"""Checkout: Buildbot's own Git step, pointed at the per-branch tree shared by the host's workers.

:class:`KernelCheckout` fetches the branch into its tree; :class:`TryCheckout`
is the same step for try builds, whose patch Buildbot's Git step applies on top
of the branch (``git apply --index``), and says so when the patch does not apply.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from buildbot.interfaces import IRenderable
from buildbot.process import buildstep, logobserver
from buildbot.process.results import FAILURE
from buildbot.steps.source.git import Git

from ktstr_steps.buildsteps.base import tree_path
from ktstr_steps.buildsteps.sourcelock import check_tree


class KernelCheckout(Git):
    """``Git(mode='incremental')`` into ``<tree_store>/<branch dir>`` (an absolute workdir).

    Incremental keeps the previous build's objects, so a rebuild of the branch on
    any LLC group of the host is an incremental make. The source lock is taken
    before this step, so the fetch never rewrites a tree that is being compiled.
    """

    name = "checkout"
    # Kept apart from workdir: an unset workdir silently falls back to the builder's.
    renderables = ["tree"]

    def __init__(self, *, repourl: str | IRenderable, tree: str | IRenderable = tree_path,
                 **kwargs: Any) -> None:
        kwargs.setdefault("mode", "incremental")
        kwargs.setdefault("logEnviron", False)
        kwargs.setdefault("haltOnFailure", True)
        self.tree = tree
        super().__init__(repourl=repourl, workdir=tree, **kwargs)

    def run(self) -> Any:
        problem = check_tree(self.tree)
        if problem:
            self.descriptionDone = [problem]
            return FAILURE
        return super().run()


class TryCheckout(KernelCheckout):
    """KernelCheckout whose failure to apply the try patch is named as such.

    Buildbot's Git step only says "update (failure)" when ``git apply`` refuses the
    patch; a developer sending a try needs to read that the patch does not apply
    to the branch, and git's first complaint, without opening the log.
    """

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
