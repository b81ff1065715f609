"""The git names CI accepts: one rule for branch names, one for commit ids.

Every edge that takes a branch name asks :func:`branch_problem` — the bare
repository's pre-receive hook, ``/change_hook/base``, the force form, the
GitHub/GitLab webhooks, the pollers and the matrix's ``branch:`` entries — so a
name refused at one edge is refused at all of them, with the same reason.

Why these limits: a branch name becomes a directory name on workers, a
builder-tree path and an argument of git commands, so only ``[A-Za-z0-9._/-]``
is allowed, and nothing that reads as an option (a leading ``-``) or climbs out
of a directory (``..``). On top of that come git's own rules for ref names
(``git check-ref-format``) so a name we accept is one git accepts too, and a
length limit: git updates ``refs/heads/<name>`` through a ``<name>.lock`` file,
and a file name has at most 255 bytes, so a longer name fails inside git with
"cannot lock ref". ``HEAD`` is refused because git resolves it to the current
commit, not to the branch.

Plain Python with no imports beyond ``re``: the git hooks use it without
Buildbot, and both the master and the steps import it.
"""

from __future__ import annotations

import re

# 255 bytes per file name, minus ".lock"; also within Buildbot's 255-character
# branch columns.
MAX_BRANCH_LENGTH = 250
RULE = (
    "CI builds branch names made of letters, digits and . _ / - only, at most "
    f"{MAX_BRANCH_LENGTH} characters long (git locks a branch as the file <name>.lock and a "
    "file name has at most 255 bytes), with no '..' or '//', not starting with '-' or '/', "
    "not ending with '/' or '.', no part starting with '.' or ending with '.lock', "
    "and not 'HEAD'"
)
_ALLOWED = re.compile(r"[A-Za-z0-9._/-]")
# SHA-1 or SHA-256 object names, lowercase as git prints them.
_REVISION = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
REVISION_RULE = "a commit id of 40 (SHA-1) or 64 (SHA-256) lowercase hex digits"


def branch_problem(name: object) -> str | None:
    """None when CI can build ``name``, else why not: one phrase ("it has '..'")."""
    if not isinstance(name, str):
        return f"it is not a string but {type(name).__name__}"
    if not name:
        return "it is empty"
    bad = sorted(set(_ALLOWED.sub("", name)))
    if bad:
        return "it has characters " + " ".join(repr(c) for c in bad)
    if len(name) > MAX_BRANCH_LENGTH:
        return f"it is {len(name)} characters long; the limit is {MAX_BRANCH_LENGTH}"
    if name == "HEAD":
        return "'HEAD' names the current commit, not a branch"
    for part, what in (("..", "'..'"), ("//", "'//'")):
        if part in name:
            return f"it has {what}"
    if name.startswith(("-", "/")):
        return f"it starts with {name[0]!r}"
    if name.endswith(("/", ".")):
        return f"it ends with {name[-1]!r}"
    for part in name.split("/"):
        if part.startswith("."):
            return f"its part {part!r} starts with '.'"
        if part.endswith(".lock"):
            return f"its part {part!r} ends with '.lock'"
    return None


def is_safe_branch(name: object) -> bool:
    """True when CI can build a branch of this name (:func:`branch_problem` finds nothing)."""
    return branch_problem(name) is None


def revision_problem(text: object) -> str | None:
    """None when ``text`` is a full commit id, else why not: one phrase."""
    if not isinstance(text, str):
        return f"it is not a string but {type(text).__name__}"
    if not _REVISION.fullmatch(text):
        return f"it is not {REVISION_RULE}"
    return None


def shown(value: object, limit: int = 80) -> str:
    """``value`` quoted for a message, cut at ``limit`` characters (input may be huge)."""
    text = value if isinstance(value, str) else str(value)
    return repr(text[:limit]) + ("..." if len(text) > limit else "")
