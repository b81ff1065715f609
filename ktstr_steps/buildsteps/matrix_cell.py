"""MatrixLookup: a release cell's cache lookup, which also fetches the release's tree.

A matrix cell of a kernel.org release builds no git tree: ``ktstr-ci phase
lookup --version V`` computes the cache key of the release and profile first,
before any reservation or download, so a cached cell ends in seconds. On a
miss the command fetches the release tarball (through the host's download
cache) and extracts it into the tree store, and the step adds the kernel
phases after itself and the release of the reservation at the end of the
build: a cached cell is lookup + record (+ publishing), not eleven step rows
(each step costs master database writes; that is most of a hit cell's time).
:func:`ktstr_steps.buildsteps.factory.kernel_build_factory` composes the cell
(``checkout=Checkout.RELEASE_TREE``).
"""

from __future__ import annotations

from typing import Any

from buildbot import config
from buildbot.interfaces import IRenderable
from buildbot.process.properties import Property
from buildbot.process.results import SUCCESS

from ktstr_steps.buildsteps.base import KtstrCiStep, check_renderable_or
from ktstr_steps.buildsteps.lookup import take_lookup

# What a cell build knows: the fan-out sets the first two, the worker has tree_store.
VERSION_PROP = Property("kernel_version")
PROFILE_PROP = Property("profile")
TREE_STORE_PROP = Property("tree_store")
# Worker properties from [paths] max_trees / max_gb; absent = no limit.
TREE_MAX_TREES = Property("tree_max_trees", default=0)
TREE_MAX_GB = Property("tree_max_gb", default=0)
# Where the lookup extracted the release's tree: the source lock and the phases use it.
EXTRACTED_TREE = Property("source_tree")


class MatrixLookup(KtstrCiStep):
    """``ktstr-ci phase lookup --version V``: a hit ends the cell; a miss fetches the tree."""

    name = "cache-lookup"
    description = ["looking up cache"]
    subcommand = ("phase", "lookup")
    phase = "lookup"
    renderables = ["version", "profile", "tree_store", "download_cache", "force",
                   "tree_max_trees", "tree_max_gb"]

    def __init__(
        self,
        *,
        version: str | IRenderable = VERSION_PROP,
        profile: str | IRenderable = PROFILE_PROP,
        tree_store: str | IRenderable = TREE_STORE_PROP,
        download_cache: str | IRenderable,
        mirror: str | None = None,
        rc_mirror: str | None = None,
        force: bool | IRenderable = False,
        download_max_files: int = 0,
        download_max_gb: float = 0.0,
        tree_max_trees: int | IRenderable = TREE_MAX_TREES,
        tree_max_gb: float | IRenderable = TREE_MAX_GB,
        state: str = "ktstr-state.json",
        miss_steps: list[Any] | None = None,
        release_steps: list[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.miss_steps = list(miss_steps or [])
        self.release_steps = list(release_steps or [])
        for name, value in (("version", version), ("profile", profile),
                            ("tree_store", tree_store), ("download_cache", download_cache)):
            check_renderable_or(value, str, type(self), name)
        check_renderable_or(force, bool, type(self), "force")
        if not isinstance(download_max_files, int) or download_max_files < 0:
            config.error(f"{type(self).__name__} argument download_max_files must be an "
                         f"integer, 0 (no limit) or more, not {download_max_files!r}")
        if not isinstance(download_max_gb, (int, float)) or not 0 <= download_max_gb < float("inf"):
            config.error(f"{type(self).__name__} argument download_max_gb must be a number "
                         f"of GiB, 0 (no limit) or more, not {download_max_gb!r}")
        self.download_max_files = download_max_files
        self.download_max_gb = download_max_gb
        self.tree_max_trees = tree_max_trees
        self.tree_max_gb = tree_max_gb
        self.version = version
        self.profile = profile
        self.tree_store = tree_store
        self.download_cache = download_cache
        self.mirror = mirror
        self.rc_mirror = rc_mirror
        self.force = force
        self.state = state
        # A download prints a progress line a second; extraction of a real tree is quiet
        # for a minute or two.
        kwargs.setdefault("timeout", 3600)
        super().__init__(**kwargs)

    def check_rendered(self) -> str | None:
        if not self.version:
            return "no kernel_version property: this builder is started by the matrix run"
        if not self.profile:
            return "no profile property: this builder is started by the matrix run"
        if not self.tree_store:
            return "worker property tree_store is not set: no place for the extracted tree"
        return None

    def arguments(self) -> list[str]:
        argv = ["--state", self.state, "--version", str(self.version),
                "--profile", str(self.profile), "--download-cache", str(self.download_cache),
                "--tree-store", str(self.tree_store)]  # fmt: skip
        if self.mirror:
            argv += ["--mirror", self.mirror]
        if self.rc_mirror:
            argv += ["--rc-mirror", self.rc_mirror]
        limits = (("--tree-max-trees", self.tree_max_trees), ("--tree-max-gb", self.tree_max_gb),
                  ("--download-max-files", self.download_max_files),
                  ("--download-max-gb", self.download_max_gb))
        for flag, value in limits:
            if value:
                argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        return argv + (["--force"] if self.force else [])

    def interpret(self, data: dict[str, Any]) -> int:
        if take_lookup(self, data):
            return SUCCESS
        key = data.get("cache_key")
        self.set_prop("source_tree", data.get("source_dir"))
        # A miss: the kernel phases run next, the reservation's release last.
        if self.miss_steps:
            self.build.addStepsAfterCurrentStep(self.miss_steps)
        if self.release_steps:
            self.build.addStepsAfterLastStep(self.release_steps)
        if data.get("downloaded"):
            how = "downloaded"
        elif data.get("tarball"):
            how = "tarball from the download cache"
        else:
            how = "extracted tree reused"
        self.descriptionDone = f"cache miss {key} ({how})"
        return SUCCESS


__all__ = ["EXTRACTED_TREE", "MatrixLookup"]
