"""CacheLookup: the kernel's cache identity; a hit ends the kernel phases early and successfully."""

from __future__ import annotations

from typing import Any

from buildbot.interfaces import IRenderable
from buildbot.process.results import SUCCESS

from ktstr_steps.buildsteps.base import KtstrCiStep, check_renderable_or, state_path, tree_path
from ktstr_steps.buildsteps.sourcelock import check_tree
from ktstr_steps.results import Outcome


def not_cache_hit(step: Any) -> bool:
    """doStepIf of the phases after lookup: skip them when the kernel came from the cache."""
    return step.getProperty("kernel_outcome") != Outcome.CACHE_HIT


def take_lookup(step: KtstrCiStep, data: dict[str, Any]) -> bool:
    """Set the key properties from ``phase lookup``'s JSON; True (and summary) on a cache hit.

    Shared by the push lookup and the matrix cell lookup: a hit means the same
    thing to both, and the record step reads the same properties.
    """
    key = data.get("cache_key")
    step.set_prop("cache_key", key)
    step.set_prop("kernel_profile", step.profile)
    if not data.get("hit"):
        # Why make runs: shown in the summary, kept for the record step and the pages.
        step.set_prop("rebuild_explanation", data.get("explanation"))
        return False
    step.set_prop("kernel_outcome", Outcome.CACHE_HIT.value)
    step.set_prop("entry_dir", data.get("entry_dir"))
    step.descriptionDone = f"cache hit {key}"
    return True


class CacheLookup(KtstrCiStep):
    """``ktstr-ci phase lookup``: starts the build's state file and looks the key up."""

    name = "cache-lookup"
    description = ["looking up cache"]
    subcommand = ("phase", "lookup")
    phase = "lookup"
    renderables = ["state", "tree", "profile", "force"]

    def __init__(
        self,
        *,
        profile: str | IRenderable,
        state: str | IRenderable = state_path,
        tree: str | IRenderable = tree_path,
        force: bool | IRenderable = False,
        **kwargs: Any,
    ) -> None:
        check_renderable_or(profile, str, type(self), "profile")
        check_renderable_or(state, str, type(self), "state")
        check_renderable_or(tree, str, type(self), "tree")
        check_renderable_or(force, bool, type(self), "force")
        self.profile = profile
        self.state = state
        self.tree = tree
        self.force = force
        super().__init__(**kwargs)

    def check_rendered(self) -> str | None:
        if not self.profile:
            return "no kernel config profile given"
        return check_tree(self.tree)

    def arguments(self) -> list[str]:
        argv = ["--state", self.state, "--source", self.tree, "--profile", self.profile]
        return argv + (["--force"] if self.force else [])

    def interpret(self, data: dict[str, Any]) -> int:
        if take_lookup(self, data):
            return SUCCESS
        key = data.get("cache_key")
        why = ["forced rebuild"] if self.force else []
        if data.get("dirty"):
            why.append("dirty tree")
        if data.get("is_git") is False:
            why.append("not a git tree")
        text = f"cache miss {key}" + (f" ({', '.join(why)})" if why else "")
        explanation = data.get("explanation")
        if explanation and not self.force and not data.get("dirty"):
            text += f": {explanation}"
        self.descriptionDone = text
        return SUCCESS
