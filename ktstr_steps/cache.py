"""The kernel cache, laid out exactly as ktstr's (reference §7) so ktstr boots what CI built.

Layout under the root (``KTSTR_CACHE_DIR`` verbatim, else
``$XDG_CACHE_HOME/ktstr/kernels``, else ``$HOME/.cache/ktstr/kernels``)::

    <key>/{bzImage|Image, vmlinux, metadata.json}
    .locks/<key>.lock          per-entry flock (EX: store, SH: ktstr test VMs)
    .tmp-<key>-<pid>/          a store in progress

``metadata.json`` carries ktstr's fields only (the seed schema, with
``extra_kconfig_hash``). ktstr deserializes it with serde and no compat shims:
an extra top-level field would be ignored by today's serde defaults, but a
future ``deny_unknown_fields`` would turn every CI entry into a corrupt one, so
anything ktstr-ci wants to remember about a build goes into a separate
``ktstr-ci.json`` next to it (ktstr never opens other files in an entry).

Fixes of ktstr defects (reference §14), none of which changes the on-disk format:
- §14.12: ``clean`` takes a non-blocking EX probe on each entry's lock and
  skips entries that test runs (SH) or a store (EX) are using, instead of
  deleting them underneath.
- §14.14: the strip-failure message names the command that exists
  (``kernel list --json``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from ktstr_steps.errors import KtstrError
from ktstr_steps.flock import (
    flock_poll,
    format_holders,
    holders,
    open_lockfile,
    try_flock,
)
from ktstr_steps.keys import key_problem, validate_image_name, validate_key
from ktstr_steps.messages import LABEL, warn
from ktstr_steps.strip import StripError, strip_vmlinux

METADATA = "metadata.json"
PROVENANCE = "ktstr-ci.json"
LOCK_DIR = ".locks"
TMP_PREFIX = ".tmp-"
STORE_LOCK_TIMEOUT = 60.0
STORE_LOCK_POLL = 0.1

# ---------------------------------------------------------------- root


def _env_text(name: str) -> str | None:
    """The variable as text, or None if unset. Non-UTF-8 values keep their surrogates."""
    return os.environ.get(name)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def cache_root() -> Path:
    """ktstr's root resolution (§7.1). Does not create anything."""
    explicit = _env_text("KTSTR_CACHE_DIR")
    if explicit:
        if not _is_utf8(explicit):
            raw = os.fsencode(explicit)
            raise KtstrError(
                f"KTSTR_CACHE_DIR contains non-UTF-8 bytes ({len(raw)} bytes): {raw!r}. "
                "ktstr requires a UTF-8 cache path — set KTSTR_CACHE_DIR to an ASCII/UTF-8 "
                "directory (e.g. `/tmp/ktstr-cache`) or unset it to fall back to "
                "$XDG_CACHE_HOME/$HOME.",
                kind="cache-root",
            )
        return Path(explicit)
    xdg = _env_text("XDG_CACHE_HOME")
    # ktstr reads XDG_CACHE_HOME with env::var, so a non-UTF-8 value counts as unset.
    if xdg and _is_utf8(xdg):
        return Path(xdg) / "ktstr" / "kernels"
    home = _env_text("HOME")
    hint = (
        "set KTSTR_CACHE_DIR to an absolute path (e.g. /tmp/ktstr-cache) or "
        "XDG_CACHE_HOME to specify a cache location explicitly."
    )
    if home is None:
        raise KtstrError(
            "HOME is unset; cannot resolve cache directory. The container init or login "
            f"shell did not assign HOME — set it to an absolute path, or {hint}",
            kind="cache-root",
        )
    if home == "":
        raise KtstrError(
            "HOME is set to the empty string; cannot resolve cache directory. An empty HOME "
            "usually means a Dockerfile or shell rc has `export HOME=` or `ENV HOME=` with "
            f"no value. Either set HOME to a real absolute path, or {hint}",
            kind="cache-root",
        )
    if not _is_utf8(home):
        raise KtstrError(
            f"HOME contains non-UTF-8 bytes ({os.fsencode(home)!r}); cannot resolve cache "
            f"directory. Set HOME to a UTF-8 absolute path, or {hint}",
            kind="cache-root",
        )
    if home == "/":
        raise KtstrError(
            "HOME is `/`; the resulting cache path /.cache/ktstr would alias the root "
            "filesystem rather than naming a user cache. This usually means the process "
            "inherited HOME from a container init or root login that did not set a real "
            "home. Set KTSTR_CACHE_DIR to an absolute path (e.g. /tmp/ktstr-cache) or "
            "XDG_CACHE_HOME to bypass HOME entirely.",
            kind="cache-root",
        )
    if not home.startswith("/"):
        raise KtstrError(
            f"HOME={home!r} is not an absolute path; ktstr requires HOME to start with `/` "
            "so the cache root resolves consistently regardless of the current working "
            "directory. Set HOME to an absolute path, or set KTSTR_CACHE_DIR / "
            "XDG_CACHE_HOME to a specific cache location.",
            kind="cache-root",
        )
    return Path(home) / ".cache" / "ktstr" / "kernels"


def _root(root: Path | str | None) -> Path:
    return Path(root) if root is not None else cache_root()


def lock_path(key: str, root: Path | str | None = None) -> Path:
    return _root(root) / LOCK_DIR / f"{key}.lock"


def utc_now() -> str:
    """``built_at`` format: UTC ``YYYY-MM-DDTHH:MM:SSZ``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ------------------------------------------------------------ metadata


class MetadataError(KtstrError):
    """metadata.json could not be used; ``kind`` is ktstr's ``error_kind`` and the
    message is ktstr's reason string (``metadata.json schema drift: ...`` etc.)."""


class _Drift(Exception):
    """A serde "Data" error: valid JSON of the wrong shape."""


def _opt_str(obj: dict, name: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise _Drift(f"invalid type for `{name}`: expected a string or null, got {_jtype(value)}")
    return value


def _req(obj: dict, name: str) -> Any:
    if name not in obj:
        raise _Drift(f"missing field `{name}`")
    return obj[name]


def _req_str(obj: dict, name: str) -> str:
    value = _req(obj, name)
    if not isinstance(value, str):
        raise _Drift(f"invalid type for `{name}`: expected a string, got {_jtype(value)}")
    return value


def _req_bool(obj: dict, name: str) -> bool:
    value = _req(obj, name)
    if not isinstance(value, bool):
        raise _Drift(f"invalid type for `{name}`: expected a boolean, got {_jtype(value)}")
    return value


def _opt_int(obj: dict, name: str, lo: int, hi: int) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    # serde's u64/i64 take JSON integers only: no floats, no booleans.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Drift(f"invalid type for `{name}`: expected an integer, got {_jtype(value)}")
    if not lo <= value <= hi:
        raise _Drift(f"invalid value for `{name}`: {value} is out of range")
    return value


def _jtype(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int | float):
        return f"number `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    return "array" if isinstance(value, list) else "map"


@dataclass(frozen=True)
class KernelSource:
    """ktstr's ``KernelSource``: serde-tagged on ``type``; payload fields are nullable."""

    type: str  # "tarball" | "git" | "local"
    git_hash: str | None = None
    ref: str | None = None
    source_tree_path: str | None = None

    @classmethod
    def tarball(cls) -> KernelSource:
        return cls("tarball")

    @classmethod
    def git(cls, git_hash: str | None, ref: str | None) -> KernelSource:
        return cls("git", git_hash=git_hash, ref=ref)

    @classmethod
    def local(cls, source_tree_path: str | Path | None, git_hash: str | None) -> KernelSource:
        path = None if source_tree_path is None else str(source_tree_path)
        return cls("local", git_hash=git_hash, source_tree_path=path)

    def to_json(self) -> dict[str, Any]:
        if self.type == "tarball":
            return {"type": "tarball"}
        if self.type == "git":
            return {"type": "git", "git_hash": self.git_hash, "ref": self.ref}
        if self.type == "local":
            return {
                "type": "local",
                "source_tree_path": self.source_tree_path,
                "git_hash": self.git_hash,
            }
        raise KtstrError(f"unknown kernel source type {self.type!r}", kind="bad-metadata")

    @classmethod
    def from_json(cls, obj: Any) -> KernelSource:
        if not isinstance(obj, dict):
            raise _Drift(
                f"invalid type for `source`: expected an internally tagged enum, got {_jtype(obj)}"
            )
        kind = obj.get("type")
        if kind is None:
            raise _Drift("missing field `type`")
        if kind == "tarball":
            return cls.tarball()
        if kind == "git":
            return cls.git(_opt_str(obj, "git_hash"), _opt_str(obj, "ref"))
        if kind == "local":
            return cls.local(_opt_str(obj, "source_tree_path"), _opt_str(obj, "git_hash"))
        raise _Drift(
            f"unknown variant {json.dumps(kind)}, expected one of `tarball`, `git`, `local`"
        )

    def __str__(self) -> str:
        return self.type


@dataclass(frozen=True)
class KernelMetadata:
    """ktstr's ``KernelMetadata`` (seed schema): field names and JSON types exactly."""

    source: KernelSource
    arch: str
    image_name: str
    built_at: str
    version: str | None = None
    config_hash: str | None = None
    ktstr_kconfig_hash: str | None = None
    extra_kconfig_hash: str | None = None
    has_vmlinux: bool = False
    vmlinux_stripped: bool = False
    source_vmlinux_size: int | None = None
    source_vmlinux_mtime_secs: int | None = None

    def to_json(self) -> dict[str, Any]:
        # serde's field order; every Option is written as an explicit null.
        return {
            "version": self.version,
            "source": self.source.to_json(),
            "arch": self.arch,
            "image_name": self.image_name,
            "config_hash": self.config_hash,
            "built_at": self.built_at,
            "ktstr_kconfig_hash": self.ktstr_kconfig_hash,
            "extra_kconfig_hash": self.extra_kconfig_hash,
            "has_vmlinux": self.has_vmlinux,
            "vmlinux_stripped": self.vmlinux_stripped,
            "source_vmlinux_size": self.source_vmlinux_size,
            "source_vmlinux_mtime_secs": self.source_vmlinux_mtime_secs,
        }

    def dumps(self) -> str:
        """serde_json::to_string_pretty: 2-space indent, raw UTF-8, no trailing newline."""
        try:
            return json.dumps(self.to_json(), indent=2, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise KtstrError(
                f"cannot serialize cache metadata: {exc}", kind="bad-metadata"
            ) from exc

    @classmethod
    def from_json(cls, text: str) -> KernelMetadata:
        """Parse like ktstr's ``read_metadata``; :class:`MetadataError` names the failure class."""
        try:
            obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
        except json.JSONDecodeError as exc:
            kind, label = _classify_decode_error(text, exc)
            raise MetadataError(f"metadata.json {label}: {exc}", kind=kind) from None
        except _Drift as exc:
            raise MetadataError(f"metadata.json schema drift: {exc}", kind="schema_drift") from None
        except (ValueError, RecursionError) as exc:
            # Anything the decoder throws that is not a syntax/EOF error (e.g. an
            # integer literal longer than Python's digit limit).
            raise MetadataError(f"metadata.json parse error: {exc}", kind="parse_error") from None
        try:
            if not isinstance(obj, dict):
                raise _Drift(f"invalid type: {_jtype(obj)}, expected struct KernelMetadata")
            source = KernelSource.from_json(_req(obj, "source"))
            meta = cls(
                source=source,
                arch=_req_str(obj, "arch"),
                image_name=_req_str(obj, "image_name"),
                built_at=_req_str(obj, "built_at"),
                version=_opt_str(obj, "version"),
                config_hash=_opt_str(obj, "config_hash"),
                ktstr_kconfig_hash=_opt_str(obj, "ktstr_kconfig_hash"),
                extra_kconfig_hash=_opt_str(obj, "extra_kconfig_hash"),
                has_vmlinux=_req_bool(obj, "has_vmlinux"),
                vmlinux_stripped=_req_bool(obj, "vmlinux_stripped"),
                source_vmlinux_size=_opt_int(obj, "source_vmlinux_size", 0, 2**64 - 1),
                source_vmlinux_mtime_secs=_opt_int(
                    obj, "source_vmlinux_mtime_secs", -(2**63), 2**63 - 1
                ),
            )
        except _Drift as exc:
            raise MetadataError(f"metadata.json schema drift: {exc}", kind="schema_drift") from None
        return meta


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Drift(f"duplicate field `{k}`")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    # serde_json rejects NaN/Infinity; Python would accept them.
    raise json.JSONDecodeError(f"invalid literal {name}", name, 0)


def _classify_decode_error(text: str, exc: json.JSONDecodeError) -> tuple[str, str]:
    """serde's Eof vs Syntax: the input ended before the value did, or it is just wrong."""
    if exc.msg.startswith("invalid literal"):
        return "malformed", "malformed"
    if exc.msg.startswith("Unterminated string") or exc.pos >= len(text.rstrip()):
        return "truncated", "truncated"
    return "malformed", "malformed"


def _os_error_text(exc: OSError) -> str:
    if exc.errno:
        return f"{exc.strerror} (os error {exc.errno})"
    return str(exc)


def read_metadata(entry_dir: Path) -> KernelMetadata:
    """``<entry>/metadata.json`` or :class:`MetadataError` with ktstr's reason prefix."""
    path = Path(entry_dir) / METADATA
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MetadataError("metadata.json missing", kind="missing") from None
    except OSError as exc:
        raise MetadataError(
            f"metadata.json unreadable: {_os_error_text(exc)}", kind="unreadable"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MetadataError(
            "metadata.json unreadable: stream did not contain valid UTF-8", kind="unreadable"
        ) from None
    return KernelMetadata.from_json(text)


IMAGE_MISSING_PREFIX = "image file "
IMAGE_MISSING_SUFFIX = " missing from entry directory"


def classify_corrupt_reason(reason: str) -> str:
    """ktstr's reason → ``error_kind`` mapping (§7.7)."""
    if reason == "metadata.json missing":
        return "missing"
    for prefix, kind in (
        ("metadata.json unreadable: ", "unreadable"),
        ("metadata.json schema drift: ", "schema_drift"),
        ("metadata.json malformed: ", "malformed"),
        ("metadata.json truncated: ", "truncated"),
        ("metadata.json parse error: ", "parse_error"),
    ):
        if reason.startswith(prefix):
            return kind
    if (
        reason.startswith(IMAGE_MISSING_PREFIX)
        and reason.endswith(IMAGE_MISSING_SUFFIX)
        and len(reason) > len(IMAGE_MISSING_PREFIX) + len(IMAGE_MISSING_SUFFIX)
    ):
        return "image_missing"
    return "unknown"


# -------------------------------------------------------------- entries


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
    """The entry for ``key`` or None (§7.7). Takes no lock; ignores kconfig status."""
    problem = key_problem(key)
    if problem is not None:
        warn(f"invalid cache key: {problem}: {key!r}")
        return None
    entry_dir = _root(root) / key
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
    base = _root(root)
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KtstrError(
            f"cannot read kernel cache {base}: {_os_error_text(exc)}. "
            "Point KTSTR_CACHE_DIR at the cache directory.",
            kind="cache-unreadable",
        ) from exc
    valid: list[ValidEntry] = []
    corrupt: list[CorruptEntry] = []
    for name in names:
        # Dot names are ktstr bookkeeping (.locks, .tmp-*); non-UTF-8 names
        # cannot be keys (ktstr skips them too).
        if name.startswith(".") or not _is_utf8(name):
            continue
        path = base / name
        if not path.is_dir():
            continue
        found = _load_entry(name, path)
        (valid if isinstance(found, ValidEntry) else corrupt).append(found)
    valid.sort(key=lambda e: e.metadata.built_at, reverse=True)
    corrupt.sort(key=lambda e: e.key)
    return [*valid, *corrupt]


# ---------------------------------------------------------------- store

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
            warn(f"failed to remove orphaned {path}: {_os_error_text(exc)}; leaving in place")
    return removed


def _mkdir_root(base: Path) -> None:
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KtstrError(
            f"cannot create kernel cache root {base}: {_os_error_text(exc)}. "
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
    """Store ``image`` (+ stripped ``vmlinux``) as entry ``key``, atomically (§7.5).

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
    base = _root(root)
    _mkdir_root(base)

    lpath = base / LOCK_DIR / f"{key}.lock"
    fd = open_lockfile(lpath)
    try:
        if not flock_poll(fd, exclusive=True, timeout=lock_timeout, poll=STORE_LOCK_POLL):
            raise _lock_timeout_error(key, lpath, lock_timeout)
        return _store_locked(key, base, image, vmlinux, metadata, provenance)
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
                f"cannot create {tmp}: {_os_error_text(exc)}. "
                "Point KTSTR_CACHE_DIR at a writable local directory.",
                kind="cache-store-failed",
            ) from exc
        try:
            shutil.copyfile(image, tmp / metadata.image_name)
        except OSError as exc:
            raise KtstrError(
                f"copy kernel image to cache: {_os_error_text(exc)}", kind="cache-store-failed"
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
                        f"copy vmlinux to cache: {_os_error_text(cexc)}",
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
                f"write cache metadata: {_os_error_text(exc)}", kind="cache-store-failed"
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
                f"atomic rename cache entry: {_os_error_text(exc)}", kind="cache-store-failed"
            ) from exc
    # The entry exists: swap so a reader sees the old or the new one, never neither.
    try:
        rename_exchange(tmp, final)
    except OSError as exc:
        raise KtstrError(
            f"atomic rename cache entry: {exc.strerror}", kind="cache-store-failed"
        ) from exc


# ------------------------------------------------------- probe and clean


def force_probe(key: str, root: Path | str | None = None) -> None:
    """§1.1 step 7: fail if anyone holds the entry lock; the probe is released at once."""
    validate_key(key)
    base = _root(root)
    lpath = base / LOCK_DIR / f"{key}.lock"
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
    """``kernel clean`` (§7.7); returns how many entries were removed.

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
    base = _root(root)
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
            print(_row(e, current_kconfig_hash, active_prefixes), file=out)
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
    lpath = base / LOCK_DIR / f"{entry.key}.lock"
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
        return f"remove {entry.key}: {_os_error_text(exc)}"
    finally:
        if fd is not None:
            os.close(fd)


# ------------------------------------------------------------ rendering

EOL_EXPLANATION = (
    "(EOL) marks entries whose major.minor series is absent from kernel.org's current "
    "active releases. Suppressed when the active-release list cannot be fetched."
)
UNTRACKED_EXPLANATION = (
    "(untracked kconfig) marks entries with no recorded ktstr.kconfig hash (pre-dates "
    "kconfig hash tracking). Rebuild with: kernel build --force VERSION (add "
    "--extra-kconfig PATH if the original entry was built with a user fragment)."
)
STALE_EXPLANATION = (
    "warning: entries marked (stale kconfig) were built against a different "
    "ktstr.kconfig. Rebuild with: kernel build --force <entry version> (add "
    "--extra-kconfig PATH if the entry was built with a user fragment)."
)


def corrupt_footer(count: int, root: Path) -> str:
    noun = "entry" if count == 1 else "entries"
    return (
        f"{count} corrupt {noun}. Run `{LABEL} kernel clean --corrupt-only` to remove.\n"
        "warning: entries marked (corrupt) cannot be used — cached metadata is missing, "
        "malformed, or references a missing image. Inspect the entry directory under "
        f"{root} to remove it manually, or run `kernel clean --corrupt-only --force` which "
        "removes ONLY corrupt entries and leaves valid ones intact. For broader cleanup, "
        "`kernel clean --force` removes ALL cached entries (valid and corrupt alike); "
        "`kernel clean --keep N --force` preserves the N newest cached entries while "
        "removing the rest."
    )


def version_prefix(version: str) -> str | None:
    """``6.12.81`` → ``6.12``; rc and ``-next`` suffixes fold into their series."""
    major, dot, rest = version.partition(".")
    if not dot:
        return None
    digits = ""
    for ch in rest:
        if not ch.isascii() or not ch.isdigit():
            break
        digits += ch
    return f"{major}.{digits}" if digits else None


def is_eol(entry: CacheEntry, active_prefixes: set[str] | None) -> bool:
    """EOL iff the entry's series is absent from a known, non-empty active list."""
    version = entry.metadata.version
    if not active_prefixes or not version or version == "-":
        return False
    prefix = version_prefix(version)
    return prefix is not None and prefix not in active_prefixes


def _row(e: ListedEntry, current: str | None, active: set[str] | None) -> str:
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


def render_list_text(
    entries: list[ListedEntry],
    root: Path | str,
    current_kconfig_hash: str | None,
    active_prefixes: set[str] | None,
    fetch_error: str | None,
) -> tuple[str, str]:
    """``kernel list`` text: (stdout, stderr) as ktstr prints them (§10.1)."""
    err: list[str] = []
    if fetch_error is not None:
        err.append(
            f"kernel list: failed to fetch active kernel series ({fetch_error}); EOL "
            "annotation disabled for this run. Check that kernel.org (or the configured "
            "releases mirror) is reachable from this host."
        )
        active_prefixes = None
    err.append(f"cache: {root}")
    if not entries:
        out = "no cached kernels. Run `kernel build` to download and build a kernel.\n"
        return out, "\n".join(err) + "\n"
    lines = [f"  {'KEY':<48} {'VERSION':<12} {'SOURCE':<8} {'ARCH':<7} BUILT"]
    any_eol = any_untracked = any_stale = False
    corrupt = 0
    for e in entries:
        lines.append(_row(e, current_kconfig_hash, active_prefixes))
        if isinstance(e, CorruptEntry):
            corrupt += 1
            continue
        status = e.kconfig_status(current_kconfig_hash)
        any_stale |= status == "stale"
        any_untracked |= status == "untracked"
        any_eol |= is_eol(e, active_prefixes)
    # Fixed order: informational legends first, the operational corrupt footer last.
    if any_eol:
        err.append(EOL_EXPLANATION)
    if any_untracked:
        err.append(UNTRACKED_EXPLANATION)
    if any_stale:
        err.append(STALE_EXPLANATION)
    if corrupt:
        err.append(corrupt_footer(corrupt, Path(root)))
    return "\n".join(lines) + "\n", "\n".join(err) + "\n"


def entry_json(
    e: ListedEntry, current_kconfig_hash: str | None, active_prefixes: set[str] | None
) -> dict[str, Any]:
    if isinstance(e, CorruptEntry):
        return {"key": e.key, "path": str(e.path), "error": e.reason, "error_kind": e.error_kind}
    m = e.metadata
    return {
        "key": e.key,
        "path": str(e.path),
        "version": m.version,
        "source": m.source.to_json(),
        "arch": m.arch,
        "built_at": m.built_at,
        "ktstr_kconfig_hash": m.ktstr_kconfig_hash,
        "extra_kconfig_hash": m.extra_kconfig_hash,
        "kconfig_status": e.kconfig_status(current_kconfig_hash),
        "eol": is_eol(e, active_prefixes),
        "config_hash": m.config_hash,
        "image_name": m.image_name,
        "image_path": str(e.image_path),
        "has_vmlinux": m.has_vmlinux,
        "vmlinux_stripped": m.vmlinux_stripped,
    }


def list_json(
    entries: list[ListedEntry],
    current_kconfig_hash: str | None,
    active_prefixes: set[str] | None,
    fetch_error: str | None,
) -> dict[str, Any]:
    """``kernel list --json`` (§10.1). A fetch error disables EOL tagging."""
    if fetch_error is not None:
        active_prefixes = None
    return {
        "current_ktstr_kconfig_hash": current_kconfig_hash,
        "active_prefixes_fetch_error": fetch_error,
        "entries": [entry_json(e, current_kconfig_hash, active_prefixes) for e in entries],
    }


__all__ = [
    "CacheEntry",
    "CorruptEntry",
    "KernelMetadata",
    "KernelSource",
    "MetadataError",
    "ValidEntry",
    "cache_root",
    "clean",
    "force_probe",
    "list_entries",
    "list_json",
    "lookup",
    "read_metadata",
    "render_list_text",
    "store",
    "utc_now",
]
