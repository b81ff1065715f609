"""Kernel cache keys: ktstr's formats and validation, and the CRC32 every key and hash uses.

One extension: a base config other than ``defconfig`` is part of the build's
identity, so it gets its own suffix. ktstr only ever builds from defconfig and
never produces such keys, so its keys are unchanged and our defconfig entries
are found by ktstr under exactly the key it would compute.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

from ktstr_steps.errors import KtstrError

_NAMED_BASES = ("defconfig", "tinyconfig", "allnoconfig")
# SHA-1 or SHA-256 object names: only a full id names one commit on every host.
_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def crc32_hex(data: bytes) -> str:
    """IEEE CRC32 as 8 lowercase hex digits, as in every ktstr key and hash field."""
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def kconfig_suffix(kconfig_hash: str, extra_hash: str | None = None) -> str:
    """``kc{S}`` or, with an --extra-kconfig fragment, ``kc{S}-xkc{X}`` (later upstream)."""
    return f"kc{kconfig_hash}" + (f"-xkc{extra_hash}" if extra_hash else "")


def base_suffix(base_config: str | Path | None) -> str:
    """Empty for defconfig (ktstr's keys); ``-base-tinyconfig`` etc.; ``-basecfg{crc}`` for a file."""
    if base_config is None or str(base_config) == "defconfig":
        return ""
    if str(base_config) in _NAMED_BASES:
        return f"-base-{base_config}"
    return f"-basecfg{crc32_hex(Path(base_config).read_bytes())}"


def tarball_key(version: str, arch: str, suffix: str) -> str:
    return f"{version}-tarball-{arch}-{suffix}"


def git_key(ref: str, hash7: str, arch: str, suffix: str) -> str:
    """ktstr puts the ref in verbatim, so a ref with ``/`` (``refs/tags/v6.14``) can
    never be cached there. We fold separators to ``_``: ktstr
    could not store such keys at all, so nothing it wrote is shadowed."""
    safe_ref = ref.replace("/", "_").replace("\\", "_")
    return f"{safe_ref}-git-{hash7}-{arch}-{suffix}"


def local_key(hash7: str, arch: str, suffix: str, config_crc: str | None = None) -> str:
    cfg = f"cfg{config_crc}-" if config_crc else ""
    return f"local-{hash7}-{arch}-{cfg}{suffix}"


def profile_key(hash7: str, arch: str, suffix: str) -> str:
    """A profile build's key: the commit and the profile's inputs, nothing of the tree.

    A profile build configures from its profile, never from the ``.config`` a
    previous build left in the tree, so that ``.config`` is not part of what was
    built: the same commit and profile give this key on every branch, tree and
    host. For a defconfig profile it is ktstr's key of a clean tree without a
    ``.config``, the key ktstr itself looks up for that commit.
    """
    return local_key(hash7, arch, suffix)


def revision_hash7(revision: str) -> str:
    """The ``hash7`` of a full commit id (ktstr keys the first 7 hex digits of HEAD)."""
    rev = revision.strip().lower()
    if not _FULL_SHA.fullmatch(rev):
        raise KtstrError(
            f"revision {revision!r} is not a full commit id (40 or 64 hex digits); "
            "pass the commit's full hash, or look up from the checked-out tree (--source)",
            kind="bad-revision",
        )
    return rev[:7]


def local_unknown_key(path_crc: str, arch: str, suffix: str) -> str:
    """Dirty or non-git trees: identified by path only, never stored."""
    return f"local-unknown-{path_crc}-{arch}-{suffix}"


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot name a cache entry, or None when it can (ktstr's rules)."""
    if not key or not key.strip():
        return "cache key must not be empty"
    if "\0" in key:
        return "cache key must not contain null bytes"
    if "/" in key or "\\" in key:
        return "cache key must not contain path separators"
    if key in (".", "..") or ".." in key:
        return "cache key must not contain path traversal ('..')"
    if key.startswith(".tmp-"):
        return "cache key must not start with the reserved '.tmp-' prefix"
    if key.startswith("."):
        # Dot-names are never listed as entries: such a store would be invisible.
        return "cache key must not start with '.'"
    return None


def validate_key(key: str) -> str:
    """Return ``key`` or raise a KtstrError naming the rule it breaks."""
    problem = key_problem(key)
    if problem is not None:
        raise KtstrError(f"{problem}: {key!r}", kind="bad-cache-key")
    return key


def validate_image_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or ".." in name or "\0" in name:
        raise KtstrError(f"invalid kernel image name {name!r}", kind="bad-image-name")
    return name
