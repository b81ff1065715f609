"""``kernel clean`` and the ``--force`` probe: removing entries nobody is using.

Unlike ktstr, ``clean`` takes a non-blocking exclusive probe on each entry's
lock and skips entries that test runs (shared) or a store (exclusive) are
using, instead of deleting them underneath.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ktstr_steps.cache import root as cache_root_mod
from ktstr_steps.cache.entries import CorruptEntry, ListedEntry, entry_row, list_entries
from ktstr_steps.cache.root import lock_path
from ktstr_steps.errors import KtstrError, os_error_text
from ktstr_steps.flock import format_holders, holders, open_lockfile, try_flock
from ktstr_steps.keys import validate_key
from ktstr_steps.messages import warn


def force_probe(key: str, root: Path | str | None = None) -> None:
    """``kernel build --force``: fail if anyone holds the entry lock; the probe is released at once."""
    validate_key(key)
    base = cache_root_mod.resolve(root)
    lpath = lock_path(key, base)
    fd = open_lockfile(lpath)
    try:
        if not try_flock(fd, exclusive=True):
            raise KtstrError(
                f'cache entry "{key}" is locked by active test runs (lockfile {lpath}, '
                f"holders: {format_holders(holders(lpath))}). Wait for those tests to finish, "
                "or kill them, then retry.",
                kind="cache-entry-locked",
            )
    finally:
        os.close(fd)


def clean_candidates(
    entries: list[ListedEntry], *, keep: int | None, corrupt_only: bool
) -> list[ListedEntry]:
    """All corrupt entries, plus valid ones after the first ``keep`` (list order)."""
    out: list[ListedEntry] = []
    kept = 0
    for e in entries:
        if isinstance(e, CorruptEntry):
            out.append(e)
        elif not corrupt_only:
            if kept < (keep or 0):
                kept += 1
            else:
                out.append(e)
    return out


def _terminal_confirm(prompt: str) -> bool:
    sys.stderr.write(prompt)
    sys.stderr.flush()
    return sys.stdin.readline().strip() in ("y", "Y")


def clean(
    *,
    keep: int | None,
    corrupt_only: bool,
    force: bool,
    confirm: Callable[[str], bool] | None = None,
    root: Path | str | None = None,
    current_kconfig_hash: str | None = None,
    active_prefixes: set[str] | None = None,
    stdout: TextIO | None = None,
) -> int:
    """``kernel clean``; returns how many entries were removed.

    ``confirm(prompt) -> bool`` asks the user (default: the terminal on stdin;
    not a terminal → error). Entries in use by test runs or a store are
    skipped with a warning instead of being deleted under them.
    """
    if keep is not None and corrupt_only:
        raise KtstrError(
            "--keep cannot be used with --corrupt-only (corrupt entries never count toward "
            "--keep); pass one of them.",
            kind="usage",
        )
    if keep is not None and keep < 0:
        raise KtstrError(f"--keep must be >= 0 (got {keep})", kind="usage")
    out = stdout or sys.stdout
    base = cache_root_mod.resolve(root)
    to_remove = clean_candidates(list_entries(base), keep=keep, corrupt_only=corrupt_only)
    if not to_remove:
        print("nothing to clean", file=out)
        return 0
    if not force:
        ask = confirm or _terminal_confirm
        if confirm is None and not sys.stdin.isatty():
            # Checked before printing anything, as ktstr does.
            raise KtstrError(
                "confirmation requires a terminal. Use --force to skip.", kind="needs-terminal"
            )
        print("the following entries will be removed:", file=out)
        for e in to_remove:
            print(entry_row(e, current_kconfig_hash, active_prefixes), file=out)
        out.flush()
        if not ask(f"remove {len(to_remove)} entries? [y/N] "):
            print("aborted", file=out)
            return 0

    total = len(to_remove)
    removed = 0
    errors: list[str] = []
    for e in to_remove:
        outcome = _remove_entry(base, e)
        if outcome is None:
            removed += 1
        elif outcome:
            errors.append(outcome)
    print(f"removed {removed} cached kernel(s).", file=out)
    if errors:
        raise KtstrError(f"removed {removed} of {total} entries; {errors[-1]}", kind="clean-failed")
    return removed


def _remove_entry(base: Path, entry: ListedEntry) -> str | None:
    """None when removed (or already gone); "" when skipped in use; else the error text."""
    lpath = lock_path(entry.key, base)
    fd: int | None = None
    if lpath.exists():
        fd = open_lockfile(lpath)
        if not try_flock(fd, exclusive=True):
            found = holders(lpath)
            os.close(fd)
            warn(
                f'cache entry "{entry.key}" is in use (lockfile {lpath}, holders: '
                f"{format_holders(found)}); not removed. Run clean again when those runs finish."
            )
            return ""
    try:
        shutil.rmtree(entry.path)
        return None
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"remove {entry.key}: {os_error_text(exc)}"
    finally:
        if fd is not None:
            os.close(fd)

