"""pre-receive: refuse ref names CI cannot build, before anything is stored.

Branch and tag names must pass the one branch-name rule of
:mod:`ktstr_steps.refnames` (the change hook, the force form, webhooks,
pollers and the matrix use it too): they become directory names on workers
and arguments of commands. Only ``refs/heads/`` and ``refs/tags/`` may be
pushed. Deletions are always allowed. Any refused ref refuses the whole push
(git's rule for pre-receive), and the message says what and how to fix it.
"""

from __future__ import annotations

import re
import sys

from ktstr_steps.refnames import MAX_BRANCH_LENGTH, RULE, branch_problem, is_safe_branch, shown

ZERO = "0" * 40
NAMESPACES = ("refs/heads/", "refs/tags/")


def suggest(name: str) -> str:
    """A buildable name close to ``name``."""
    fixed = re.sub(r"[^A-Za-z0-9._/-]+", "-", name)
    fixed = re.sub(r"\.\.+", ".", fixed)
    fixed = re.sub(r"//+", "/", fixed)
    parts = [re.sub(r"\.lock$", "-lock", p.lstrip(".")) for p in fixed.split("/")]
    fixed = "/".join(p for p in parts if p)[:MAX_BRANCH_LENGTH].strip("-/.")
    return fixed if is_safe_branch(fixed) else "my-branch"


def check_ref(ref: str) -> str | None:
    """None when ``ref`` may be pushed, else the reason (one line)."""
    if not ref.startswith(NAMESPACES):
        return (
            f"refusing {ref}: only branches (refs/heads/...) and tags (refs/tags/...) "
            "can be pushed to the CI repository"
        )
    kind = "branch" if ref.startswith("refs/heads/") else "tag"
    name = ref.split("/", 2)[2]
    problem = branch_problem(name)
    if problem is None:
        return None
    return (
        f"refusing {kind} {shown(name)}: {problem}; {RULE}. "
        f"Push it under another name, e.g.: git push <remote> HEAD:refs/heads/{suggest(name)}"
    )


def main(lines: list[str] | None = None) -> int:
    if lines is None:
        lines = sys.stdin.read().splitlines()
    refused = 0
    for line in lines:
        parts = line.split()
        if len(parts) != 3:
            continue
        _old, new, ref = parts
        if new == ZERO:
            continue  # deleting is always fine (and starts nothing)
        reason = check_ref(ref)
        if reason:
            print(f"ktstr-ci: {reason}", file=sys.stderr)
            refused += 1
    if refused:
        print("ktstr-ci: push refused; nothing was stored", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
