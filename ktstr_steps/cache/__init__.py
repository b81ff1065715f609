"""The kernel cache, laid out exactly as ktstr's so ktstr boots what CI built.

- ``root``: where the cache is (ktstr's root rule, the one definition) and its layout.
- ``metadata``: ``metadata.json``, ktstr's schema, and why an entry is corrupt.
- ``entries``: lookup of a key, the listing, one entry's line.
- ``writer``: the atomic store under the entry's lock.
- ``remote``: installing an entry fetched from the master, verified against the
  sha256s recorded when it was published (imported as the module).
- ``cleaner``: ``kernel clean`` and the ``--force`` probe.

What ``kernel list`` prints is the command's business (``ktstr_steps.cli_render``).
The names below are the package's interface; callers import them from here.
"""

from ktstr_steps.cache.cleaner import clean, clean_candidates, force_probe
from ktstr_steps.cache.entries import (
    CacheEntry,
    CorruptEntry,
    ListedEntry,
    ValidEntry,
    entry_row,
    is_eol,
    list_entries,
    lookup,
)
from ktstr_steps.cache.metadata import (
    METADATA,
    PROVENANCE,
    KernelMetadata,
    KernelSource,
    MetadataError,
    classify_corrupt_reason,
    read_metadata,
    utc_now,
)
from ktstr_steps.cache.root import LOCK_DIR, cache_root, lock_path
from ktstr_steps.cache.writer import STORE_LOCK_TIMEOUT, rename_exchange, store, sweep_orphans

__all__ = [
    "LOCK_DIR",
    "METADATA",
    "PROVENANCE",
    "STORE_LOCK_TIMEOUT",
    "CacheEntry",
    "CorruptEntry",
    "KernelMetadata",
    "KernelSource",
    "ListedEntry",
    "MetadataError",
    "ValidEntry",
    "cache_root",
    "classify_corrupt_reason",
    "clean",
    "clean_candidates",
    "entry_row",
    "force_probe",
    "is_eol",
    "list_entries",
    "lock_path",
    "lookup",
    "read_metadata",
    "rename_exchange",
    "store",
    "sweep_orphans",
    "utc_now",
]
