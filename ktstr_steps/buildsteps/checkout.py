"""Checkout: Buildbot's own Git step, pointed at the per-branch tree shared by the host's workers."""

from __future__ import annotations

from typing import Any

from buildbot.interfaces import IRenderable
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
