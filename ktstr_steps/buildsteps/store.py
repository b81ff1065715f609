"""CacheStore: the dirty gate, the post-build re-check and the atomic store into the cache."""

from __future__ import annotations

from typing import Any

from buildbot.process.results import SUCCESS, WARNINGS

from ktstr_steps.buildsteps.base import StateFileStep, first_error
from ktstr_steps.results import Outcome

# Why a built kernel was not cached, in the words a kernel developer acts on.
NOT_CACHED = {
    Outcome.DIRTY_NOT_CACHED: "working tree has uncommitted changes",
    Outcome.NON_GIT_NOT_CACHED: "source tree is not a git repository",
    Outcome.CHANGED_DURING_BUILD: "source tree changed during build",
}


class CacheStore(StateFileStep):
    """``ktstr-ci phase store``; ``store-failed`` is WARNINGS (the kernel was built)."""

    name = "cache-store"
    description = ["storing in cache"]
    subcommand = ("phase", "store")
    phase = "store"
    warnOnWarnings = True

    def interpret(self, data: dict[str, Any]) -> int:
        outcome = data.get("outcome")
        key = data.get("cache_key")
        for name in ("kernel_outcome", "cache_key", "image_path", "config_hash", "entry_dir"):
            self.set_prop(name, outcome if name == "kernel_outcome" else data.get(name))
        if outcome == Outcome.CACHED:
            self.descriptionDone = f"cached {key}"
            return SUCCESS
        if outcome == Outcome.STORE_FAILED:
            why = first_error(data) or next(iter(data.get("warnings") or []), None)
            if not why:
                why = "cache store failed"
            elif not why.startswith("cache store failed"):
                why = f"cache store failed: {why}"
            self.descriptionDone = why
            return WARNINGS
        why = NOT_CACHED.get(str(outcome), str(outcome))
        self.descriptionDone = f"not cached ({outcome}): {why}"
        return SUCCESS
