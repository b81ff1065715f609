"""Values a user gives on the command line: counts and numbers of seconds.

Counts are argparse ``type=`` functions (a bad one is a usage error, exit 2);
seconds are parsed by the command itself, so a bad value is ktstr-ci's one-line
error with exit status 1.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ktstr_steps.errors import KtstrError


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
    """A command line's number of seconds: finite, >= 0 (> 0 unless ``zero_ok``)."""
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
