"""The kernel version grammar: exact versions, major.minor prefixes, ranges, and their order.

Exact versions are ``6.14``, ``6.14.2`` and ``6.15-rc3``; nothing else ever
reaches a URL or a file name, so a version string cannot smuggle path segments
into a download. A prefix is ``6`` or ``6.12``; a range is ``A..B``. All of it
is pure: no I/O.
"""

from __future__ import annotations

import re

from ktstr_steps.errors import KtstrError

VERSION_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(?:-rc(\d+))?$")
_PREFIX_RE = re.compile(r"^\d+(?:\.\d+)?$")
_NUMERIC_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")
_SERIES_RE = re.compile(r"^(\d+)\.(\d+)")


def parse_exact(version: str) -> re.Match[str]:
    """The match of an exact version, or ``bad-version`` naming every accepted form."""
    m = VERSION_RE.fullmatch(version or "")
    if not m:
        raise KtstrError(
            f"invalid kernel version {version!r}: expected MAJOR.MINOR[.PATCH] or "
            "MAJOR.MINOR-rcN (e.g. 6.14.2, 6.15-rc3), a prefix (6.12), a range (6.10..6.12), "
            "`latest` or `mainline`",
            kind="bad-version",
        )
    return m


def is_rc(version: str) -> bool:
    return "-rc" in version


def version_tuple(version: str) -> tuple[int, int, int, float]:
    """Sort key (major, minor, patch or 0, rc or +inf): 6.15-rc3 < 6.15 < 6.15.1."""
    m = parse_exact(version)
    rc = float(m.group(4)) if m.group(4) is not None else float("inf")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), rc)


def sort_loose(version: str) -> tuple:
    """:func:`version_tuple`, with anything that is not an exact version sorted last."""
    try:
        return version_tuple(version)
    except KtstrError:
        return (float("inf"),)


def is_prefix(spec: str) -> bool:
    """ktstr's "major.minor prefix": fewer than two dots, no -rc, numeric."""
    return bool(_PREFIX_RE.fullmatch(spec or ""))


def is_range(spec: str) -> bool:
    return ".." in (spec or "")


def numeric(version: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a release without -rc, or None."""
    m = _NUMERIC_RE.fullmatch(version)
    if not m:
        return None
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def series_of(version: str) -> str | None:
    """major.minor of a version, rc and -next suffixes folded ("6.15-rc3" -> "6.15")."""
    m = _SERIES_RE.match(version or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def parse_range(spec: str) -> tuple[str, str]:
    """Split and validate ``A..B`` without any I/O (ktstr checks inversion before fetching)."""
    start, sep, end = (spec or "").partition("..")
    if not sep or not start or not end or ".." in end:
        raise KtstrError(
            f"invalid kernel range {spec!r}: expected START..END, e.g. 6.10..6.12",
            kind="bad-version",
        )
    for v in (start, end):
        if not VERSION_RE.fullmatch(v):
            raise KtstrError(
                f"invalid kernel range {spec!r}: endpoint {v!r} is not MAJOR.MINOR[.PATCH][-rcN]",
                kind="bad-version",
            )
    if version_tuple(start) > version_tuple(end):
        raise KtstrError(
            f"inverted kernel range `{spec}`: start version is greater than end version. "
            f"Swap the endpoints: `{end}..{start}`",
            kind="bad-version",
        )
    return start, end
