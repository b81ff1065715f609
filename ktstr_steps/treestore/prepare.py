"""``ktstr-ci trees prepare``: make a build's per-branch tree ready for the checkout.

Run by the checkout step under the build's source lock, before git checks
the revision out:

1. the repository's branch (and revision) is fetched into the host's mirror;
2. an existing tree is stamped as used now (and made to borrow the mirror's
   objects if it predates the mirror); a missing one is seeded from the
   builder's nearest built tree, or created empty when there is none;
3. with ``checkout``, the commit is checked out in the tree (:mod:`.checkout`:
   the checkout step then runs no git of its own);
4. the store is pruned to its limits, never touching this tree.

Everything said on stderr ends up in the checkout step's ``tree`` log.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ktstr_steps.errors import KtstrError
from ktstr_steps.messages import say
from ktstr_steps.treestore import inventory
from ktstr_steps.treestore.checkout import check_out
from ktstr_steps.treestore.mirror import borrow_objects, update_mirror
from ktstr_steps.treestore.prune import Limits, prune_store
from ktstr_steps.treestore.seed import seed_new_tree


def store_of(tree: Path) -> Path:
    """The tree store of a per-branch tree ``<store>/<builder>/<branch dir>``."""
    return tree.parent.parent


def check_tree_path(tree: Path) -> None:
    if not tree.is_absolute() or tree.name in ("", ".", "..") or tree.parent.name in ("", ".", ".."):
        raise KtstrError(
            f"tree {tree} is not <tree store>/<builder>/<branch dir>: pass the per-branch "
            "tree's absolute path", kind="usage",
        )


def prepare_tree(tree: Path, *, repourl: str, branch: str | None, revision: str | None,
                 cache_root: Path, limits: Limits, now: float | None = None,
                 checkout: bool = False) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; the JSON answer of the command."""
    tree = Path(tree)
    check_tree_path(tree)
    store = store_of(tree)
    started = time.monotonic()
    mirror, commit = update_mirror(store, repourl, branch, revision)
    fetched = time.monotonic()
    out: dict[str, Any] = {"tree": str(tree), "mirror": str(mirror), "commit": commit,
                           "seed": None, "skipped": [], "removed": [], "checkout": None}
    label = f"{store.name}/{tree.parent.name}/{branch or tree.name}"
    if (tree / ".git").is_dir():
        added = borrow_objects(tree / ".git", mirror)
        out["action"] = "existing"
        say(f"tree {label} exists: incremental update to {commit[:7]}"
            + (" (now borrowing the shared git objects)" if added else ""))
    elif tree.exists() and any(tree.iterdir()):
        raise KtstrError(f"{tree} exists but is not a git tree: move it away", kind="tree-store")
    else:
        if tree.exists():
            tree.rmdir()
        for gone in inventory.sweep_leftovers(tree.parent):
            say(f"removed {gone}: left behind by a process that died")
        seed, skipped = seed_new_tree(tree, commit, mirror, cache_root)
        out["skipped"] = skipped
        for s in skipped:
            say(f"not seeding from {s['path']}: {s['reason']}")
        if seed is None:
            out["action"] = "fresh"
            say(f"no tree of builder {tree.parent.name} shares history with {commit[:7]}: "
                f"fresh tree {label} (a full build), git objects shared from {mirror}")
        else:
            out["action"] = "seeded"
            out["seed"] = seed.to_json()
            say(f"seeded from {seed.tree.label(store)} ({seed.tree.commit[:7] if seed.tree.commit else '?'}, "
                f"{seed.why()}, built {inventory.when(seed.tree.last_built)}); "
                f"make rebuilds only what changed"
                + ("; sources hard-linked (no file cloning here), build outputs copied"
                   if seed.copy == "linked-sources" else "")
                + (f"; {seed.relocated} build record{'s' * (seed.relocated != 1)} of its tools "
                   "(objtool...) rewritten to this path, so they are not rebuilt"
                   if seed.relocated else ""))
    inventory.write_stamp(tree, builder=tree.parent.name, branch=branch,
                          last_built=round(now if now is not None else time.time(), 3),
                          **({"seeded_from": out["seed"]["path"]} if out["seed"] else {}))
    prepared = time.monotonic()
    if checkout:
        out["checkout"] = check_out(tree, commit, branch)
    out["removed"] = prune_store(store, limits, cache_root, keep=(tree,))
    out["seconds"] = {"mirror": round(fetched - started, 3),
                      "tree": round(prepared - fetched, 3),
                      **({"checkout": out["checkout"]["seconds"]} if checkout else {})}
    return out
