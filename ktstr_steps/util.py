"""Small shared pieces: the CLI label, CRC32 rendering, messages, errors, CPU lists."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

LABEL = "ktstr-ci"

# Repository root (editable install): kconfig/ lives here. Overridable so an
# installed copy on a worker host can point at its own kconfig directory.
REPO_ROOT = Path(__file__).resolve().parent.parent


def kconfig_dir() -> Path:
    return Path(os.environ.get("KTSTR_CI_KCONFIG_DIR") or REPO_ROOT / "kconfig")


class KtstrError(Exception):
    """An error the user can act on: the message says what went wrong and how to fix it.

    ``kind`` is a short machine-readable tag that lands in ``--json`` output
    (``errors[].kind``) so steps and tests need not parse prose.
    """

    def __init__(self, message: str, *, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


class ResourceContention(KtstrError):
    """LLC / lock contention: the same condition ktstr reports as ResourceContention."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="resource-contention")


def crc32_hex(data: bytes) -> str:
    """IEEE CRC32 as 8 lowercase hex digits, as in every ktstr key and hash field."""
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def say(msg: str) -> None:
    """A human diagnostic line on stderr, prefixed with the label (ktstr's "LABEL: ..." form)."""
    print(f"{LABEL}: {msg}", file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    """A warning on stderr; steps count lines starting with ``ktstr-ci: warning:``."""
    print(f"{LABEL}: warning: {msg}", file=sys.stderr, flush=True)


class Progress:
    """Progress for long work (download, configure, make) on stderr.

    Lines have the fixed shape ``ktstr-ci: progress: <phase>: <text>`` so a
    Buildbot step can show the text in its status line; on a terminal they
    rewrite one line instead. Updates are rate-limited to ``interval`` seconds
    so a make log of 50k lines does not turn into 50k progress lines.
    """

    def __init__(self, phase: str, *, interval: float = 1.0, stream=None) -> None:
        self.phase = phase
        self.interval = interval
        self.stream = stream or sys.stderr
        self._last = 0.0
        self._tty = self.stream.isatty()
        self._dirty = False

    def update(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        line = f"{LABEL}: progress: {self.phase}: {text}"
        if self._tty:
            self.stream.write("\r\x1b[K" + line)
            self._dirty = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self, text: str | None = None) -> None:
        if self._tty and self._dirty:
            self.stream.write("\r\x1b[K")
            self._dirty = False
        if text:
            self.stream.write(f"{LABEL}: {text}\n")
        self.stream.flush()


def parse_cpulist(text: str) -> list[int]:
    """Parse the kernel's list syntax (``0-3,8,10-11``) into sorted CPU ids."""
    cpus: set[int] = set()
    text = text.strip()
    if not text:
        return []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            lo_i, hi_i = int(lo), int(hi)
            if hi_i < lo_i:
                raise ValueError(f"descending range {part!r} in CPU list {text!r}")
            cpus.update(range(lo_i, hi_i + 1))
        else:
            cpus.add(int(part))
    return sorted(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """Compact range form, the inverse of :func:`parse_cpulist` (``0-3,8,10-11``)."""
    ids = sorted(set(cpus))
    out: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(out)


def bypass_llc_locks() -> bool:
    """ktstr's rule: any non-empty KTSTR_BYPASS_LLC_LOCKS (even "0") bypasses."""
    return bool(os.environ.get("KTSTR_BYPASS_LLC_LOCKS"))


def int_at_least(lo: int) -> Callable[[str], int]:
    """An argparse ``type=`` for integers >= ``lo`` (counts, limits, -j)."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}") from None
        if n < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {n}")
        return n

    return parse


def parse_seconds(text: str | None, flag: str, *, default: float | None = None,
                  zero_ok: bool = True) -> float | None:
    """A command line's number of seconds: finite, >= 0 (> 0 unless ``zero_ok``).

    Parsed by the command, not by argparse, so a bad value is ktstr-ci's one-line
    error with exit status 1.
    """
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    return check_seconds(value, flag, zero_ok=zero_ok, shown=text)


def check_seconds(value: float, flag: str, *, zero_ok: bool = True, shown: str | None = None) -> float:
    """``value`` when it is a finite number of seconds, >= 0 (> 0 unless ``zero_ok``).

    ``nan`` must not pass: every comparison with it is false, so a wait of
    ``nan`` seconds never ends.
    """
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        least = "0 or more" if zero_ok else "more than 0"
        text = shown if shown is not None else repr(value)
        raise KtstrError(
            f"{flag} must be a finite number of seconds, {least}, not {text[:40]!r}",
            kind="usage",
        )
    return value
