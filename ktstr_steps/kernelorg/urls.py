"""Where kernel.org things come from: releases.json, stable and -rc tarballs, checksum files.

Each location is a flag value > environment > kernel.org default:

- releases.json: ``KTSTR_CI_RELEASES_URL`` (https://www.kernel.org/releases.json)
- stable tarballs: ``KTSTR_CI_KERNEL_MIRROR`` (https://cdn.kernel.org/pub/linux/kernel),
  fetched as ``{mirror}/v{major}.x/linux-{V}.tar.xz``, with their sums in
  ``{mirror}/v{major}.x/sha256sums.asc``
- release candidates: ``KTSTR_CI_RC_MIRROR`` (https://git.kernel.org/torvalds/t),
  fetched as ``{rc_mirror}/linux-{V}.tar.gz`` (no sums are published for them)
"""

from __future__ import annotations

import os

from ktstr_steps.kernelorg.versions import is_rc, parse_exact, version_tuple

DEFAULT_RELEASES_URL = "https://www.kernel.org/releases.json"
DEFAULT_MIRROR = "https://cdn.kernel.org/pub/linux/kernel"
DEFAULT_RC_MIRROR = "https://git.kernel.org/torvalds/t"

ENV_RELEASES_URL = "KTSTR_CI_RELEASES_URL"
ENV_MIRROR = "KTSTR_CI_KERNEL_MIRROR"
ENV_RC_MIRROR = "KTSTR_CI_RC_MIRROR"


def _pick(flag: str | None, env: str, default: str) -> str:
    value = flag or os.environ.get(env) or default
    return value.rstrip("/")


def releases_url(flag: str | None = None) -> str:
    """Where releases.json comes from: ``flag`` > ``$KTSTR_CI_RELEASES_URL`` > kernel.org."""
    return _pick(flag, ENV_RELEASES_URL, DEFAULT_RELEASES_URL)


def mirror_url(flag: str | None = None) -> str:
    """Base of stable tarballs: ``flag`` > ``$KTSTR_CI_KERNEL_MIRROR`` > cdn.kernel.org."""
    return _pick(flag, ENV_MIRROR, DEFAULT_MIRROR)


def rc_mirror_url(flag: str | None = None) -> str:
    """Base of -rc tarballs: ``flag`` > ``$KTSTR_CI_RC_MIRROR`` > git.kernel.org/torvalds/t."""
    return _pick(flag, ENV_RC_MIRROR, DEFAULT_RC_MIRROR)


def series_dir(major: str, mirror: str | None = None) -> str:
    """``{mirror}/v{major}.x``: the directory of a major's stable tarballs and their sums."""
    return f"{mirror_url(mirror)}/v{major}.x"


def tarball_url(version: str, *, mirror: str | None = None, rc_mirror: str | None = None) -> str:
    """The URL ktstr would download ``version`` from (xz for stable, gzip for -rc)."""
    m = parse_exact(version)
    if is_rc(version):
        return f"{rc_mirror_url(rc_mirror)}/linux-{version}.tar.gz"
    return f"{series_dir(m.group(1), mirror)}/linux-{version}.tar.xz"


def tarball_name(version: str) -> str:
    """``linux-{V}.tar.xz``, or ``.tar.gz`` for an -rc (the forms kernel.org serves)."""
    version_tuple(version)  # validates: no path segments in a file name
    return f"linux-{version}.tar.gz" if is_rc(version) else f"linux-{version}.tar.xz"


def sums_url(version: str, mirror: str | None = None) -> str | None:
    """Where kernel.org publishes the sums of ``version``'s tarball, or None (-rc)."""
    if is_rc(version):
        return None
    return f"{series_dir(version.split('.')[0], mirror)}/sha256sums.asc"
