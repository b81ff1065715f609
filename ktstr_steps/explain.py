"""Why a build runs make: what differs from the nearest kernel the cache already has.

The nearest entry is the same profile's newest cache entry whose commit is an
ancestor of the commit being built, or, without one, the newest entry of the
profile. The answer is one line, e.g. ``nearest cached entry `<key>` differs
in: commit (a1b2c3d → d4e5f6a, 3 files changed), fragment `preempt.kconfig`
(1a2b3c4d → 5e6f7a8b), gcc 12.2.0 → 13.1.0``, or ``first build of this commit
and profile`` when the cache holds nothing of the profile.

:func:`explain` is pure (identities in, text out); :func:`explain_miss` feeds
it from the cache and the tree's git history. An entry's identity is the one
its build left in ``<entry>/ktstr-ci.json``; entries stored without one (by
ktstr itself, or by an older ktstr-ci) cannot be compared and are passed over.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIRST_BUILD = "first build of this commit and profile"
_VERSION = re.compile(r"\d+(?:\.\d+)+")


@dataclass(frozen=True)
class Candidate:
    """One cache entry that could be the nearest: its key, identity and build time."""

    key: str
    identity: dict[str, Any]
    built_at: str


def tool_version_number(line: str | None) -> str | None:
    """``12.2.0`` of ``gcc (Debian 12.2.0-14) 12.2.0``; the whole line when it has no number."""
    if not line:
        return line
    found = _VERSION.findall(line)
    return found[-1] if found else line


def _short(value: Any) -> str:
    return "none" if value is None else str(value)


def differences(
    current: dict[str, Any], nearest: dict[str, Any], *, files_changed: int | None = None
) -> list[str]:
    """What differs between two identities, input by input, in the order builds depend on."""
    out: list[str] = []
    if current.get("commit") != nearest.get("commit"):
        what = f"commit ({_short(nearest.get('commit'))} → {_short(current.get('commit'))}"
        if files_changed is not None:
            what += f", {files_changed} file{'s' if files_changed != 1 else ''} changed"
        out.append(what + ")")
    cur_base, old_base = current.get("base_config") or {}, nearest.get("base_config") or {}
    if cur_base.get("name") != old_base.get("name"):
        out.append(f"base config ({_short(old_base.get('name'))} → {_short(cur_base.get('name'))})")
    elif cur_base.get("hash") != old_base.get("hash"):
        out.append(f"base config `{cur_base.get('name')}` "
                   f"({_short(old_base.get('hash'))} → {_short(cur_base.get('hash'))})")
    if current.get("ktstr_kconfig_hash") != nearest.get("ktstr_kconfig_hash"):
        out.append(f"ktstr.kconfig ({_short(nearest.get('ktstr_kconfig_hash'))} → "
                   f"{_short(current.get('ktstr_kconfig_hash'))})")
    cur_frag = {f.get("name"): f.get("hash") for f in current.get("fragments") or []}
    old_frag = {f.get("name"): f.get("hash") for f in nearest.get("fragments") or []}
    for name in [*cur_frag, *(n for n in old_frag if n not in cur_frag)]:
        if name not in old_frag:
            out.append(f"fragment `{name}` added")
        elif name not in cur_frag:
            out.append(f"fragment `{name}` removed")
        elif cur_frag[name] != old_frag[name]:
            out.append(f"fragment `{name}` ({_short(old_frag[name])} → {_short(cur_frag[name])})")
    if current.get("arch") != nearest.get("arch"):
        out.append(f"arch ({_short(nearest.get('arch'))} → {_short(current.get('arch'))})")
    cur_vars, old_vars = current.get("make_vars") or {}, nearest.get("make_vars") or {}
    for name in sorted(set(cur_vars) | set(old_vars)):
        if cur_vars.get(name) != old_vars.get(name):
            out.append(f"make {name} ({_short(old_vars.get(name))} → {_short(cur_vars.get(name))})")
    cur_tc, old_tc = current.get("toolchain") or {}, nearest.get("toolchain") or {}
    for tool in ("gcc", "ld", "pahole"):
        if cur_tc.get(tool) != old_tc.get(tool):
            old_v, new_v = tool_version_number(old_tc.get(tool)), tool_version_number(cur_tc.get(tool))
            if old_v == new_v:  # same number, another build of the tool: show the lines
                old_v, new_v = old_tc.get(tool), cur_tc.get(tool)
            out.append(f"{tool} {_short(old_v)} → {_short(new_v)}")
    return out


def nearest(
    current: dict[str, Any],
    candidates: Sequence[Candidate],
    is_ancestor: Callable[[str], bool],
) -> Candidate | None:
    """The same profile's newest entry whose commit is an ancestor, else its newest entry."""
    same = [c for c in candidates if c.identity.get("profile") == current.get("profile")]
    same.sort(key=lambda c: c.built_at, reverse=True)
    for c in same:
        commit = c.identity.get("commit")
        if commit and commit == current.get("commit"):
            return c
        if commit and is_ancestor(commit):
            return c
    return same[0] if same else None


def explain(
    current: dict[str, Any],
    candidates: Sequence[Candidate],
    *,
    is_ancestor: Callable[[str], bool] = lambda commit: False,
    files_changed: Callable[[str], int | None] = lambda commit: None,
) -> str:
    """Why a build with identity ``current`` missed the cache, as one line."""
    near = nearest(current, candidates, is_ancestor)
    if near is None:
        return FIRST_BUILD
    old_commit = near.identity.get("commit")
    changed = (files_changed(old_commit)
               if old_commit and old_commit != current.get("commit") else None)
    diff = differences(current, near.identity, files_changed=changed)
    if not diff:
        return f"nearest cached entry `{near.key}` has the same inputs (its key differs: " \
               "a .config in the tree, or a different source)"
    return f"nearest cached entry `{near.key}` differs in: {', '.join(diff)}"


# -- from the cache and the tree ----------------------------------------------


def cache_candidates(root: Path | None = None) -> list[Candidate]:
    """Every cache entry that carries the identity its build recorded."""
    from ktstr_steps import cache

    out = []
    for entry in cache.list_entries(root):
        if not isinstance(entry, cache.ValidEntry):
            continue
        try:
            prov = json.loads((entry.path / cache.PROVENANCE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        ident = prov.get("identity") if isinstance(prov, dict) else None
        if isinstance(ident, dict):
            out.append(Candidate(entry.key, ident, entry.metadata.built_at))
    return out


def _git(tree: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
    from ktstr_steps.source import _git_env

    try:
        return subprocess.run(["git", *args], cwd=tree, env=_git_env(), capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def git_is_ancestor(tree: Path, commit: str) -> bool:
    proc = _git(tree, "merge-base", "--is-ancestor", commit, "HEAD")
    return proc is not None and proc.returncode == 0


def git_files_changed(tree: Path, commit: str) -> int | None:
    proc = _git(tree, "diff", "--name-only", "--no-renames", commit, "HEAD", "--")
    if proc is None or proc.returncode != 0:
        return None
    return sum(1 for line in proc.stdout.splitlines() if line.strip())


def explain_miss(state: Any, *, force: bool = False) -> str:
    """Why this build (a BuildState after a lookup miss) runs make."""
    if force:
        return "forced rebuild (--force)"
    if state.is_dirty:
        why = "uncommitted changes" if state.is_git else "not a git tree"
        return f"the tree has {why}: such builds are never cached"
    current = state.identity or {}
    tree = Path(state.source_dir) if state.source_dir else None
    try:
        candidates = cache_candidates()
    except Exception as exc:  # an unreadable cache only costs the explanation
        return f"{FIRST_BUILD} (the cache could not be read: {exc})"
    if tree is None or not state.is_git:
        return explain(current, candidates)
    return explain(
        current, candidates,
        is_ancestor=lambda c: git_is_ancestor(tree, c),
        files_changed=lambda c: git_files_changed(tree, c),
    )  # fmt: skip
