"""Storing a built kernel as a cache entry, atomically, under the entry's lock.

The files go to ``.tmp-<key>-<pid>/`` first (image, stripped vmlinux,
metadata.json, ktstr-ci.json) and are renamed into place; an existing entry is
swapped with ``renameat2(RENAME_EXCHANGE)``, so a reader sees the old or the
new entry, never neither. The store holds the entry's flock exclusively; the
debris of a crashed store (a ``.tmp-*-<pid>`` of a dead pid) is swept by the
next one. When vmlinux cannot be stripped it is cached raw, and the warning
names a command that exists (``kernel list --json``; ktstr's names one that
does not).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import platform
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from ktstr_steps.cache import root as cache_root_mod
from ktstr_steps.cache.entries import CacheEntry
from ktstr_steps.cache.metadata import METADATA, PROVENANCE, KernelMetadata
from ktstr_steps.cache.root import TMP_PREFIX, lock_path
from ktstr_steps.errors import KtstrError, os_error_text
from ktstr_steps.flock import flock_poll, format_holders, holders, open_lockfile
from ktstr_steps.keys import validate_image_name, validate_key
from ktstr_steps.messages import LABEL, warn
from ktstr_steps.strip import StripError, strip_vmlinux

STORE_LOCK_TIMEOUT = 60.0
STORE_LOCK_POLL = 0.1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 1 << 1
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}


def rename_exchange(a: Path, b: Path) -> None:
    """Atomically swap two paths: renameat2(RENAME_EXCHANGE); no stdlib wrapper exists."""
    fa, fb = os.fsencode(str(a)), os.fsencode(str(b))
    fn = getattr(_libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        rc = fn(_AT_FDCWD, fa, _AT_FDCWD, fb, _RENAME_EXCHANGE)
    else:  # glibc < 2.28: the raw syscall
        nr = _SYS_RENAMEAT2.get(platform.machine())
        if nr is None:
            raise OSError(errno.ENOSYS, "renameat2 is not available on this platform")
        rc = _libc.syscall(nr, _AT_FDCWD, fa, _AT_FDCWD, fb, _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"renameat2(RENAME_EXCHANGE) {a} <-> {b}: {os.strerror(err)}")


def sweep_orphans(root: Path) -> list[Path]:
    """Remove ``.tmp-*-<pid>`` dirs whose pid is dead (crashed stores). Failures only warn."""
    removed: list[Path] = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(TMP_PREFIX):
            continue
        _, _, suffix = name.rpartition("-")
        try:
            pid = int(suffix)
        except ValueError:
            continue
        if pid <= 0 or not suffix.isdigit():
            continue
        try:
            os.kill(pid, 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, someone else's
        except OverflowError:
            pass  # no such pid can exist
        path = root / name
        try:
            shutil.rmtree(path)
            removed.append(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            warn(f"failed to remove orphaned {path}: {os_error_text(exc)}; leaving in place")
    return removed


def _mkdir_root(base: Path) -> None:
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KtstrError(
            f"cannot create kernel cache root {base}: {os_error_text(exc)}. "
            "Point KTSTR_CACHE_DIR at a writable local directory.",
            kind="cache-root-unusable",
        ) from exc


def _lock_timeout_error(key: str, path: Path, timeout: float) -> KtstrError:
    return KtstrError(
        f'flock LOCK_EX on cache entry "{key}" timed out after {timeout:g}s '
        f"(lockfile {path}, holders: {format_holders(holders(path))}).",
        kind="cache-lock-timeout",
    )


def store(
    key: str,
    image: Path,
    *,
    vmlinux: Path | None,
    metadata: KernelMetadata,
    root: Path | str | None = None,
    provenance: dict[str, Any] | None = None,
    lock_timeout: float = STORE_LOCK_TIMEOUT,
) -> CacheEntry:
    """Store ``image`` (+ stripped ``vmlinux``) as entry ``key``, atomically.

    ``provenance`` (optional) lands in ``<entry>/ktstr-ci.json``, never in
    metadata.json. ``has_vmlinux``/``vmlinux_stripped`` of ``metadata`` are
    ignored and set from what was really stored.
    """
    validate_key(key)
    validate_image_name(metadata.image_name)
    image = Path(image)
    if not image.is_file():
        raise KtstrError(
            f"kernel image {image} does not exist or is not a file; nothing was cached",
            kind="cache-store-failed",
        )
    if vmlinux is not None and not Path(vmlinux).is_file():
        raise KtstrError(
            f"vmlinux {vmlinux} does not exist or is not a file; pass vmlinux=None to cache "
            "the image alone",
            kind="cache-store-failed",
        )
    metadata.dumps()  # fail on unserializable metadata before touching the cache
    with entry_write_lock(key, root, lock_timeout) as base:
        return _store_locked(key, base, image, vmlinux, metadata, provenance)


@contextmanager
def entry_write_lock(key: str, root: str | os.PathLike[str] | None,
                     lock_timeout: float) -> Iterator[Path]:
    """The cache root, created if missing, while this process holds ``key``'s entry lock
    exclusively (what a store or an install needs); a timeout names the holders."""
    base = cache_root_mod.resolve(root)
    _mkdir_root(base)
    lpath = lock_path(key, base)
    fd = open_lockfile(lpath)
    try:
        if not flock_poll(fd, exclusive=True, timeout=lock_timeout, poll=STORE_LOCK_POLL):
            raise _lock_timeout_error(key, lpath, lock_timeout)
        yield base
    finally:
        os.close(fd)  # drops the flock


def _store_locked(
    key: str,
    base: Path,
    image: Path,
    vmlinux: Path | None,
    metadata: KernelMetadata,
    provenance: dict[str, Any] | None,
) -> CacheEntry:
    final = base / key
    tmp = base / f"{TMP_PREFIX}{key}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)  # our own debris from an earlier crash of this pid
        sweep_orphans(base)
        try:
            tmp.mkdir()
        except OSError as exc:
            raise KtstrError(
                f"cannot create {tmp}: {os_error_text(exc)}. "
                "Point KTSTR_CACHE_DIR at a writable local directory.",
                kind="cache-store-failed",
            ) from exc
        try:
            shutil.copyfile(image, tmp / metadata.image_name)
        except OSError as exc:
            raise KtstrError(
                f"copy kernel image to cache: {os_error_text(exc)}", kind="cache-store-failed"
            ) from exc

        has_vmlinux = stripped = False
        if vmlinux is not None:
            has_vmlinux = True
            try:
                strip_vmlinux(Path(vmlinux), tmp / "vmlinux")
                stripped = True
            except StripError as exc:
                warn(
                    f"cache: vmlinux strip failed for {key} ({exc}); caching unstripped "
                    f"(larger on-disk payload). See `{LABEL} kernel list --json` "
                    "vmlinux_stripped field."
                )
                try:
                    shutil.copyfile(vmlinux, tmp / "vmlinux")
                except OSError as cexc:
                    raise KtstrError(
                        f"copy vmlinux to cache: {os_error_text(cexc)}",
                        kind="cache-store-failed",
                    ) from cexc

        meta = replace(metadata, has_vmlinux=has_vmlinux, vmlinux_stripped=stripped)
        try:
            (tmp / METADATA).write_text(meta.dumps(), encoding="utf-8")
            if provenance is not None:
                (tmp / PROVENANCE).write_text(
                    json.dumps(provenance, indent=2, sort_keys=True) + "\n", encoding="utf-8"
                )
        except OSError as exc:
            raise KtstrError(
                f"write cache metadata: {os_error_text(exc)}", kind="cache-store-failed"
            ) from exc

        _install(tmp, final)
        return CacheEntry(key, final, meta)
    finally:
        # Now empty (rename) or the displaced old entry (exchange), or debris on error.
        shutil.rmtree(tmp, ignore_errors=True)


def _install(tmp: Path, final: Path) -> None:
    try:
        os.rename(tmp, final)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise KtstrError(
                f"atomic rename cache entry: {os_error_text(exc)}", kind="cache-store-failed"
            ) from exc
    # The entry exists: swap so a reader sees the old or the new one, never neither.
    try:
        rename_exchange(tmp, final)
    except OSError as exc:
        raise KtstrError(
            f"atomic rename cache entry: {exc.strerror}", kind="cache-store-failed"
        ) from exc

