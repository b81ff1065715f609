"""The cache lookups: a hit ends the kernel phases early and successfully.

:class:`RevisionLookup` runs first, from the commit the change carries and the
profile, with no tree: a commit already built for this profile (on any branch,
tree or host sharing the cache) needs no reservation, no source lock and no
checkout. :class:`CacheLookup` runs after the checkout and keys the tree
itself: for a build without a commit id (a forced build of a branch tip), or
when the revision lookup missed.
"""

from __future__ import annotations

import re
from typing import Any

from buildbot.interfaces import IRenderable
from buildbot.process.results import SKIPPED, SUCCESS

from ktstr_steps.buildsteps.base import KtstrCiStep, check_renderable_or, state_path, tree_path
from ktstr_steps.buildsteps.sourcelock import check_tree
from ktstr_steps.results import HIT_OUTCOMES, Outcome

# Set on a hit of the revision lookup: nothing was reserved or locked, nothing to release.
HIT_BEFORE_CHECKOUT = "hit_before_checkout"
# Set by a lookup that missed with a key another host may have built and published
# (a clean git tree, not forced): the remote lookup asks the master for it.
REMOTE_KEY = "remote_lookup_key"
_FULL_SHA = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")


def not_cache_hit(step: Any) -> bool:
    """doStepIf of the phases after lookup: skip them when the kernel came from a cache
    (this host's, or another host's entry installed from the master)."""
    return step.getProperty("kernel_outcome") not in HIT_OUTCOMES


def held_something(step: Any) -> bool:
    """doStepIf of release: false only when the build ended at the revision lookup."""
    return not step.getProperty(HIT_BEFORE_CHECKOUT)


def commit_revision(step: Any) -> str | None:
    """The full commit id this build is for, or None (a branch tip, several codebases...)."""
    rev = step.getProperty("revision")
    return rev if isinstance(rev, str) and _FULL_SHA.fullmatch(rev) else None


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
        # Only the latest lookup's key may be asked for: a dirty tree after a clean commit
        # lookup must not install the commit's kernel as the tree's.
        clean = key and data.get("is_git") is not False and not data.get("dirty")
        step.setProperty(REMOTE_KEY, key if clean and not step.force else None,
                         type(step).__name__)
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


class RevisionLookup(CacheLookup):
    """``ktstr-ci phase lookup --revision``: the commit and the profile, before any checkout.

    Skipped (the tree lookup after the checkout does the work) when the build
    carries no full commit id or is forced.
    """

    name = "revision-lookup"
    description = ["looking up commit"]

    async def run(self) -> int:
        self.revision = commit_revision(self)
        if self.revision is None or self.force:
            self.descriptionDone = ("forced: no lookup before checkout" if self.force
                                    else "no commit id: looked up after checkout")
            return SKIPPED
        return await super().run()

    def check_rendered(self) -> str | None:
        return None if self.profile else "no kernel config profile given"

    def arguments(self) -> list[str]:
        argv = ["--state", self.state, "--revision", self.revision, "--profile", self.profile]
        return argv + (["--tree", self.tree] if isinstance(self.tree, str) and self.tree else [])

    def interpret(self, data: dict[str, Any]) -> int:
        short = self.revision[:12]
        if take_lookup(self, data):
            self.set_prop(HIT_BEFORE_CHECKOUT, True)
            # No checkout will say which commit the build is of: this step does, as a
            # source step would (the UI and the matrix read got_revision).
            self.set_prop("got_revision", self.revision)
            self.descriptionDone = f"cache hit {data.get('cache_key')} ({short}, no checkout)"
            return SUCCESS
        self.descriptionDone = f"cache miss {data.get('cache_key')} ({short})"
        return SUCCESS
