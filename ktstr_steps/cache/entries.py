"""The entries of the kernel cache: lookup of one key, the listing, and one entry's line.

An entry is valid when its metadata.json parses and its image exists; anything
else under a key is a :class:`CorruptEntry` with ktstr's reason. Lookups take
no lock (ktstr's lookups do not either); a store replaces an entry atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ktstr_steps.cache import root as cache_root_mod
from ktstr_steps.cache.metadata import (
    IMAGE_MISSING_PREFIX,
    IMAGE_MISSING_SUFFIX,
    KernelMetadata,
    MetadataError,
    classify_corrupt_reason,
    read_metadata,
)
from ktstr_steps.errors import KtstrError, os_error_text
from ktstr_steps.kernelorg.versions import series_of
from ktstr_steps.keys import key_problem
from ktstr_steps.messages import warn


@dataclass
class CacheEntry:
    key: str
    path: Path
    metadata: KernelMetadata

    @property
    def image_path(self) -> Path:
        return self.path / self.metadata.image_name

    @property
    def vmlinux_path(self) -> Path | None:
        return self.path / "vmlinux" if self.metadata.has_vmlinux else None

    def kconfig_status(self, current_hash: str | None) -> str:
        """``matches`` / ``stale`` / ``untracked`` against the current baked-fragment hash."""
        cached = self.metadata.ktstr_kconfig_hash
        if cached is None:
            return "untracked"
        return "matches" if cached == current_hash else "stale"


class ValidEntry(CacheEntry):
    """A listed entry whose metadata parses and whose image exists."""


@dataclass
class CorruptEntry:
    key: str
    path: Path
    reason: str

    @property
    def error_kind(self) -> str:
        return classify_corrupt_reason(self.reason)


ListedEntry = ValidEntry | CorruptEntry


def _load_entry(key: str, entry_dir: Path) -> ListedEntry:
    try:
        meta = read_metadata(entry_dir)
    except MetadataError as exc:
        return CorruptEntry(key, entry_dir, str(exc))
    if not (entry_dir / meta.image_name).exists():
        return CorruptEntry(
            key, entry_dir, f"{IMAGE_MISSING_PREFIX}{meta.image_name}{IMAGE_MISSING_SUFFIX}"
        )
    return ValidEntry(key, entry_dir, meta)


def lookup(key: str, root: Path | str | None = None) -> CacheEntry | None:
    """The entry for ``key`` or None. Takes no lock; ignores kconfig status."""
    problem = key_problem(key)
    if problem is not None:
        warn(f"invalid cache key: {problem}: {key!r}")
        return None
    entry_dir = cache_root_mod.resolve(root) / key
    if not entry_dir.is_dir():
        return None
    found = _load_entry(key, entry_dir)
    if not isinstance(found, ValidEntry):
        return None
    entry = CacheEntry(found.key, found.path, found.metadata)
    if entry.metadata.has_vmlinux and not entry.metadata.vmlinux_stripped:
        warn(
            f"cache: using unstripped vmlinux for {key} (strip failed on a prior build; "
            "re-run with a clean cache to retry)"
        )
    return entry


def list_entries(root: Path | str | None = None) -> list[ListedEntry]:
    """Valid entries newest ``built_at`` first, then corrupt ones (by key)."""
    base = cache_root_mod.resolve(root)
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KtstrError(
            f"cannot read kernel cache {base}: {os_error_text(exc)}. "
            "Point KTSTR_CACHE_DIR at the cache directory.",
            kind="cache-unreadable",
        ) from exc
    valid: list[ValidEntry] = []
    corrupt: list[CorruptEntry] = []
    for name in names:
        # Dot names are ktstr bookkeeping (.locks, .tmp-*); non-UTF-8 names
        # cannot be keys (ktstr skips them too).
        if name.startswith(".") or not cache_root_mod.is_utf8(name):
            continue
        path = base / name
        if not path.is_dir():
            continue
        found = _load_entry(name, path)
        (valid if isinstance(found, ValidEntry) else corrupt).append(found)
    valid.sort(key=lambda e: e.metadata.built_at, reverse=True)
    corrupt.sort(key=lambda e: e.key)
    return [*valid, *corrupt]


def is_eol(entry: CacheEntry, active_prefixes: set[str] | None) -> bool:
    """EOL iff the entry's series is absent from a known, non-empty active list."""
    version = entry.metadata.version
    if not active_prefixes or not version or version == "-":
        return False
    prefix = series_of(version)
    return prefix is not None and prefix not in active_prefixes


def entry_row(e: ListedEntry, current: str | None, active: set[str] | None) -> str:
    """One entry's line, as ``kernel list`` and ``kernel clean`` print it."""
    if isinstance(e, CorruptEntry):
        return f"  {e.key:<48} (corrupt: {e.reason})"
    m = e.metadata
    tags = ""
    status = e.kconfig_status(current)
    if status != "matches":
        tags += f" ({status} kconfig)"
    if is_eol(e, active):
        tags += " (EOL)"
    return f"  {e.key:<48} {m.version or '-':<12} {str(m.source):<8} {m.arch:<7} {m.built_at}{tags}"
