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
) -> dict:
    """``phase lookup --version V``: key and lookup without I/O; on a miss, fetch and extract.

    ``state`` is a fresh :class:`~ktstr_steps.buildstate.BuildState` from
    ``init_state``. Returns the lookup phase's JSON fields.
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
    if tree.is_dir():
        say(f"reusing the extracted tree {tree}")
    else:
        with timed(state, "download"):
            fetched = fetch_tarball(version, download_cache, mirror=mirror, rc_mirror=rc_mirror)
        out.update(downloaded=fetched.downloaded, tarball=str(fetched.path))
        with timed(state, "extract"):
            extract_tree(fetched.path, version, tree)
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
