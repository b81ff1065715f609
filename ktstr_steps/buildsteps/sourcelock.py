"""SourceLock: the flock on the per-branch tree, taken by the holder and kept to build end."""

from __future__ import annotations

import posixpath
from typing import Any

from buildbot.interfaces import IRenderable
from buildbot.process.results import SUCCESS

from ktstr_steps.buildsteps.base import KtstrCiStep, check_renderable_or, holder_name, tree_path
from ktstr_steps.buildsteps.reserve import check_wait


def check_tree(tree: Any) -> str | None:
    """Why a rendered tree path is unusable, or None."""
    if not tree:
        return "worker property tree_store is not set: no place for the per-branch tree"
    if not posixpath.isabs(str(tree)):
        return f"tree path {tree!r} is not absolute (worker property tree_store)"
    return None


class SourceLock(KtstrCiStep):
    """``ktstr-ci holder lock-source``; runs before checkout so no build's tree is rewritten
    under another build of the same branch that is still compiling it."""

    name = "source-lock"
    description = ["locking source tree"]
    subcommand = ("holder", "lock-source")
    phase = "source_lock"
    renderables = ["holder", "tree"]
    sigtermTime = 10

    def __init__(
        self,
        *,
        holder: str | IRenderable = holder_name,
        tree: str | IRenderable = tree_path,
        lock_wait: int = 3600,
        **kwargs: Any,
    ) -> None:
        check_renderable_or(holder, str, type(self), "holder")
        check_renderable_or(tree, str, type(self), "tree")
        check_wait(lock_wait, type(self))
        self.holder = holder
        self.tree = tree
        self.lock_wait = lock_wait
        kwargs.setdefault("timeout", lock_wait + 600)
        super().__init__(**kwargs)

    def check_rendered(self) -> str | None:
        return check_tree(self.tree)

    def arguments(self) -> list[str]:
        return ["--name", self.holder, "--source", self.tree, "--wait", str(self.lock_wait)]

    def interpret(self, data: dict[str, Any]) -> int:
        waited = float(data.get("waited_seconds") or 0)
        self.set_prop("source_tree", self.tree)
        if waited >= 1:
            pids = [str(h.get("pid")) for h in data.get("holders_seen") or [] if h.get("pid")]
            who = f" for pid {', '.join(pids)}" if pids else ""
            self.descriptionDone = f"waited {waited:.0f}s{who}"
        else:
            self.descriptionDone = "source tree locked"
        return SUCCESS
