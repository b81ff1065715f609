"""A release's tree for a matrix cell (``phase lookup --version V``): key first, fetch on a miss.

A tarball build's cache key is known from the version alone, so a hit returns
before anything is downloaded. On a miss the tarball comes from the per-host
download cache and is extracted to a persistent tree,
``<tree store>/tarballs/<cache key>``: the later phase commands run in it, and
a rebuild after a cache eviction is incremental. The key includes the config
inputs, so two profiles of one version never share a ``.config``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ktstr_steps import keys, pipeline, source
from ktstr_steps.buildstate import BuildState, timed
from ktstr_steps.errors import KtstrError
from ktstr_steps.kernelorg.download_cache import extract_tree, fetch_tarball
from ktstr_steps.kernelorg.download_limits import prune_downloads, tarball_in_use
from ktstr_steps.kernelorg.versions import version_tuple
from ktstr_steps.messages import say


def tarball_tree(tree_store: str | os.PathLike[str], cache_key: str) -> Path:
    """The persistent tree of a tarball build: ``<tree store>/tarballs/<cache key>``."""
    return Path(tree_store) / "tarballs" / keys.validate_key(cache_key)


def lookup_version(
    state: BuildState,
    version: str,
    *,
    download_cache: str | os.PathLike[str] | None,
    tree_store: str | os.PathLike[str] | None,
    mirror: str | None = None,
    rc_mirror: str | None = None,
    force: bool = False,
    tree_limits: tuple[int, float] = (0, 0.0),
    download_limits: tuple[int, float] = (0, 0.0),
) -> dict:
    """``phase lookup --version V``: key and lookup without I/O; on a miss, fetch and extract.

    ``state`` is a fresh :class:`~ktstr_steps.buildstate.BuildState` from
    ``init_state``. Returns the lookup phase's JSON fields. After a miss, the
    release trees and the download cache are pruned to ``tree_limits``
    (trees, GiB) and ``download_limits`` (files, GiB), never touching this
    cell's own tree or tarball; ``removed`` lists what went.
    """
    version_tuple(version)
    if not download_cache or not tree_store:
        raise KtstrError(
            "phase lookup --version needs --download-cache DIR and --tree-store DIR",
            kind="usage",
        )
    with timed(state, "lookup"):
        probe = source.AcquiredSource(
            src_dir=Path("."), kind="tarball", version=version, is_git=True
        )
        pipeline.apply_source(state, probe)
        pipeline.compute_key(state, probe)
        entry = None if force else pipeline.lookup_cached(state)
    out = {
        "cache_key": state.cache_key,
        "hit": entry is not None,
        "dirty": False,
        "is_git": True,
        "git_hash": None,
        "version": version,
        "downloaded": False,
        "tarball": None,
        "source_dir": None,
    }
    if entry is not None:
        pipeline.mark_hit(state, entry)
        return {**out, "entry_dir": state.entry_dir, "outcome": state.outcome}
    tree = tarball_tree(tree_store, state.cache_key)
    tarball = None
    if tree.is_dir():
        say(f"reusing the extracted tree {tree}")
        os.utime(tree)  # used now: the least recently built tree is the first to go
    else:
        with timed(state, "download"):
            fetched = fetch_tarball(version, download_cache, mirror=mirror, rc_mirror=rc_mirror)
        tarball = fetched.path
        out.update(downloaded=fetched.downloaded, tarball=str(fetched.path))
        with timed(state, "extract"), tarball_in_use(fetched.path):
            if not fetched.path.is_file():  # pruned by another cell in between
                fetched = fetch_tarball(version, download_cache, mirror=mirror,
                                        rc_mirror=rc_mirror)
            extract_tree(fetched.path, version, tree)
        # The tree's own mtime came from the tarball; "last built" is now.
        os.utime(tree)
    out["removed"] = _prune(Path(tree_store), tree, Path(download_cache), tarball,
                            tree_limits, download_limits)
    src = source.AcquiredSource(
        src_dir=tree, kind="tarball", version=version, canonical_path=tree.resolve(),
        is_temp=False, is_dirty=False, is_git=True,
    )  # fmt: skip
    pipeline.apply_source(state, src)
    pipeline.compute_key(state, src)
    from ktstr_steps.explain import explain_miss

    state.explanation = explain_miss(state, force=force)
    return {**out, "entry_dir": None, "outcome": None, "source_dir": str(tree),
            "explanation": state.explanation}


def _prune(store: Path, tree: Path, downloads: Path, tarball: Path | None,
           tree_limits: tuple[int, float], download_limits: tuple[int, float]) -> list[dict]:
    from ktstr_steps import cache
    from ktstr_steps.treestore.prune import Limits, prune_store

    removed = prune_store(store, Limits(*tree_limits), cache.cache_root(), keep=(tree,))
    files, gb = download_limits
    removed += prune_downloads(downloads, max_files=files, max_gb=gb,
                               keep=(tarball,) if tarball else ())
    return removed
