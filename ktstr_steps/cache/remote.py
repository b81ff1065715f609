"""Installing another host's cache entry, fetched from the master, into this host's cache.

Every stored kernel is published to the master with the size and sha256 of
each file, recorded when it was published. A host whose own lookup missed
fetches that entry's files into a staging directory and :func:`install` puts
them into the local cache: each file is copied into ``.tmp-<key>-<pid>/``
while it is hashed, and the copy is compared with what the master recorded.
Only when every file matches is the directory renamed into place (or swapped
with an existing entry), under the entry's exclusive flock like a store. A
file that is missing, short or different refuses the whole entry with one
line naming the file and both checksums, and nothing is left in the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ktstr_steps.cache.entries import CacheEntry
from ktstr_steps.cache.metadata import METADATA, PROVENANCE, KernelMetadata, MetadataError
from ktstr_steps.cache.root import TMP_PREFIX
from ktstr_steps.cache.writer import (
    STORE_LOCK_TIMEOUT,
    _install,
    entry_write_lock,
    sweep_orphans,
)
from ktstr_steps.errors import KtstrError, os_error_text
from ktstr_steps.keys import validate_image_name, validate_key

VMLINUX = "vmlinux"
# The files of a cache entry; a published .config or SHA256SUMS is not part of one.
ENTRY_NAMES = frozenset({"bzImage", "Image", VMLINUX, METADATA})
REFUSED_KIND = "remote-entry-refused"
_BLOCK = 1 << 20


class RemoteEntryRefused(KtstrError):
    """The fetched entry is not what the master recorded: the build goes on as a miss."""

    def __init__(self, key: str, why: str, *, file: str | None = None,
                 expected: str | None = None, got: str | None = None) -> None:
        super().__init__(f"remote cache entry {key} refused: {why}", kind=REFUSED_KIND)
        self.file = file
        self.expected = expected
        self.got = got


def expected_files(files: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    """``{name: (sha256, size)}`` of the entry's files among a published ``files`` map."""
    out: dict[str, tuple[str, int]] = {}
    for name, info in files.items():
        if name not in ENTRY_NAMES or not isinstance(info, Mapping):
            continue
        sha, size = info.get("sha256"), info.get("size")
        if isinstance(sha, str) and isinstance(size, int) and not isinstance(size, bool):
            out[name] = (sha.lower(), size)
    return out


def parse_expect(values: list[str]) -> dict[str, tuple[str, int]]:
    """``NAME=SHA256:SIZE`` arguments (``phase install --expect``) as :func:`expected_files`."""
    out: dict[str, tuple[str, int]] = {}
    for value in values:
        name, _, rest = value.partition("=")
        sha, _, size = rest.partition(":")
        if (name not in ENTRY_NAMES or len(sha) != 64 or not size.isdigit()
                or any(c not in "0123456789abcdefABCDEF" for c in sha)):
            raise KtstrError(f"--expect {value!r} is not NAME=SHA256:SIZE with NAME one of "
                             f"{', '.join(sorted(ENTRY_NAMES))}", kind="usage")
        out[name] = (sha.lower(), int(size))
    return out


def _copy_hashed(src: Path, dst: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while block := fin.read(_BLOCK):
            h.update(block)
            fout.write(block)
            size += len(block)
    return h.hexdigest(), size


def _check_plan(key: str, staging: Path, expected: Mapping[str, tuple[str, int]]) -> str:
    """The image name, once the master's record names a complete entry."""
    if METADATA not in expected:
        raise RemoteEntryRefused(key, f"the master recorded no {METADATA} for it")
    try:
        meta = KernelMetadata.from_json((staging / METADATA).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RemoteEntryRefused(key, f"{METADATA} was not transferred") from None
    except (OSError, UnicodeDecodeError, MetadataError) as exc:
        raise RemoteEntryRefused(key, f"{METADATA} is unreadable: {exc}") from None
    image = meta.image_name
    if image not in expected:
        raise RemoteEntryRefused(key, f"the master recorded no {image} (its metadata's image)")
    if meta.has_vmlinux and VMLINUX not in expected:
        raise RemoteEntryRefused(key, f"the master recorded no {VMLINUX}, which its "
                                      f"{METADATA} says the entry has")
    return image


def install(key: str, staging: Path, expected: Mapping[str, tuple[str, int]], *,
            root: Path | str | None = None, origin: str | None = None,
            lock_timeout: float = STORE_LOCK_TIMEOUT) -> CacheEntry:
    """Verify ``staging``'s files against ``expected`` and install them as entry ``key``.

    Raises :class:`RemoteEntryRefused` (kind ``remote-entry-refused``) when a
    file is missing or its size or sha256 is not the recorded one; the cache is
    then unchanged. ``origin`` (e.g. the published build's URL) goes to
    ``ktstr-ci.json``.
    """
    validate_key(key)
    staging = Path(staging)
    image = _check_plan(key, staging, expected)
    validate_image_name(image)
    with entry_write_lock(key, root, lock_timeout) as base:
        return _install_locked(key, base, staging, expected, origin)


def _install_locked(key: str, base: Path, staging: Path,
                    expected: Mapping[str, tuple[str, int]], origin: str | None) -> CacheEntry:
    final = base / key
    tmp = base / f"{TMP_PREFIX}{key}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        sweep_orphans(base)
        tmp.mkdir()
        for name, (sha, size) in sorted(expected.items()):
            src = staging / name
            if not src.is_file():
                raise RemoteEntryRefused(key, f"{name} was not transferred (partial entry; "
                                              f"the master recorded sha256 {sha})",
                                         file=name, expected=sha)
            try:
                got_sha, got_size = _copy_hashed(src, tmp / name)
            except OSError as exc:
                raise KtstrError(f"copy {name} into the cache: {os_error_text(exc)}",
                                 kind="cache-store-failed") from exc
            if got_size != size or got_sha != sha:
                raise RemoteEntryRefused(
                    key, f"{name} has sha256 {got_sha} ({got_size} bytes), the master recorded "
                         f"{sha} ({size} bytes) at publish",
                    file=name, expected=sha, got=got_sha)
        meta = KernelMetadata.from_json((tmp / METADATA).read_text(encoding="utf-8"))
        provenance = {"installed_from": "master", "origin": origin}
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n",
                                      encoding="utf-8")
        _install(tmp, final)
        return CacheEntry(key, final, meta)
    finally:
        # Empty after the rename, the displaced old entry after a swap, debris on refusal.
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["ENTRY_NAMES", "REFUSED_KIND", "RemoteEntryRefused", "expected_files", "install",
           "parse_expect"]
