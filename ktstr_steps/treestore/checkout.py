"""Check a prepared per-branch tree out at the build's commit, in the preparing process.

Buildbot's Git step does the same work as seven worker commands (``git
--version``, two stats, ``cat-file``, two ``checkout`` and ``rev-parse``),
each a round trip between master and worker. The tree's objects are the host
mirror's (which :func:`ktstr_steps.treestore.prepare.prepare_tree` has just
fetched the commit into), so nothing needs fetching: one ``git checkout``
here does it. It keeps Buildbot's incremental semantics: tracked files are
forced to the commit, untracked files (the build outputs) stay, the tree's
local branch is reset to the commit (``checkout -B``). A tree a try patch was
applied to (the Git step's ``.buildbot-patched`` marker) loses what the patch
added as well; where the Git step then wipes every untracked file, build
outputs too (``clean -x``), this keeps the ignored ones, as seeding from such a
tree does: the checkout gives the files the patch changed new mtimes, so make
rebuilds exactly those.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ktstr_steps.errors import KtstrError
from ktstr_steps.messages import say
from ktstr_steps.source import git_ok, run_git

# Written by Buildbot's Git step when it applies a try patch to a tree.
PATCHED_MARKER = ".buildbot-patched"


def check_out(tree: Path, commit: str, branch: str | None) -> dict[str, Any]:
    """Force ``tree``'s tracked files to ``commit`` (module docstring); the answer's ``checkout``."""
    started = time.monotonic()
    marker = tree / PATCHED_MARKER
    patched = marker.exists()
    # -B moves the tree's own branch to the commit; detached when the build has no branch.
    argv = ["checkout", "--quiet", "--force", *(["-B", branch] if branch else ["--detach"]),
            commit, "--"]
    git_ok(argv, tree, f"git checkout {commit[:12]}")
    if patched:
        # Files the patch added; ignored files (the build outputs) stay.
        git_ok(["clean", "-q", "-f", "-d"], tree, "git clean")
        marker.unlink(missing_ok=True)  # clean removed it unless .gitignore covers it
        say(f"{tree} had a try patch applied: its changes and the files it added are gone, "
            "build outputs kept")
    r = run_git(["rev-parse", "--verify", "HEAD^{commit}"], cwd=tree)
    head = r.stdout.strip()
    if r.returncode != 0 or head != commit:
        raise KtstrError(f"after checking out {commit} in {tree}, HEAD is {head or 'unset'}",
                         kind="git-failed")
    seconds = round(time.monotonic() - started, 3)
    say(f"checked out {commit[:12]}" + (f" as branch {branch}" if branch else " (detached)")
        + f" in {seconds:.2f} s")
    return {"commit": head, "branch": branch, "cleaned_patch": patched, "seconds": seconds}
