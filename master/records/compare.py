"""What changed and what got worse: a build against the earlier builds of its branch.

Each built row is compared, on the master before it is written, with the
previous build of the same branch and profile (config diff, new warnings) and
with the median of that branch's last builds (size and make time). The rules
are pure functions of rows; :func:`insert_compared` reads the history and
writes the row with ``config_diff``, ``new_warnings`` and ``alerts`` filled.

A cache hit built nothing and is not compared; a build whose branch has no
earlier build with the same data has nothing to be compared with and gets no
diff, no new warnings and no alerts.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ktstr_steps.make_warnings import new_warnings as diff_warnings
from master.records import queries
from master.records.models import KernelBuild
from master.records.rows import to_time, validate_build_row


@dataclass(frozen=True)
class AlertRules:
    """The ``[alerts]`` settings: which regressions turn a build WARNINGS."""

    new_warnings: bool = True
    bzimage_growth_pct: float | None = 2.0  # None: rule off
    make_time_growth_pct: float | None = 25.0
    # A make time that grew by less than this many seconds is timer noise on a
    # shared host (a one-file build takes seconds), never a regression.
    make_time_min_seconds: float = 30.0
    window: int = 10  # the branch's last N builds whose median is the baseline


def config_diff(old: Mapping[str, str] | None, new: Mapping[str, str] | None) -> dict | None:
    """``{"added": {sym: val}, "removed": {sym: val}, "changed": {sym: [old, new]}}``, or None
    when either side is unknown. Symbols are the set ones (a removed one is now off)."""
    if old is None or new is None:
        return None
    return {
        "added": {k: v for k, v in sorted(new.items()) if k not in old},
        "removed": {k: v for k, v in sorted(old.items()) if k not in new},
        "changed": {k: [old[k], v] for k, v in sorted(new.items()) if k in old and old[k] != v},
    }


def _median(values: Sequence[Any]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, int | float) and v > 0]
    return statistics.median(nums) if nums else None


def _growth_alert(what: str, value: Any, history: Sequence[Any], pct: float | None,
                  unit: str, n: int, min_increase: float = 0.0) -> str | None:
    if pct is None or not isinstance(value, int | float):
        return None
    base = _median(history)
    if base is None:
        return None
    growth = (float(value) - base) / base * 100.0
    if growth <= pct or float(value) - base < min_increase:
        return None
    fmt = (lambda x: f"{x:,.0f} bytes") if unit == "bytes" else (lambda x: f"{x:.1f}s")
    return (f"{what} up {growth:.1f}% ({fmt(value)} against the median {fmt(base)} of the "
            f"branch's last {n} builds; alert above {pct:g}%)")


def alerts(
    row: Mapping[str, Any],
    new: list[dict] | None,
    history: Sequence[Mapping[str, Any]],
    rules: AlertRules,
) -> list[str]:
    """The alerts one build trips: its new warnings, bzImage size and make time against
    ``history`` (the branch's earlier builds, newest first)."""
    out: list[str] = []
    if rules.new_warnings and new:
        out.append(f"{len(new)} new warning{'s' if len(new) != 1 else ''}")
    recent = list(history)[: rules.window]
    size = _growth_alert("bzImage size", row.get("bzimage_bytes"),
                         [h.get("bzimage_bytes") for h in recent], rules.bzimage_growth_pct,
                         "bytes", len(recent))
    if size:
        out.append(size)
    made = _growth_alert("make time", row.get("make_s"), [h.get("make_s") for h in recent],
                         rules.make_time_growth_pct, "seconds", len(recent),
                         min_increase=rules.make_time_min_seconds)
    if made:
        out.append(made)
    return out


def compare(row: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
            rules: AlertRules) -> dict[str, Any]:
    """``config_diff``, ``new_warnings`` and ``alerts`` of a built row against its
    branch's earlier builds (newest first); {} when there is nothing to compare."""
    if row.get("config_symbols") is None and row.get("warnings") is None:
        return {}  # nothing was built (a hit, or a build that failed before make)
    built = [h for h in history if h.get("config_symbols") is not None
             or h.get("warnings") is not None]
    if not built:
        return {}
    prev = built[0]
    new = (diff_warnings(row.get("warnings"), prev.get("warnings"))
           if row.get("warnings") is not None and prev.get("warnings") is not None else None)
    return {
        "config_diff": config_diff(prev.get("config_symbols"), row.get("config_symbols")),
        "new_warnings": new,
        "alerts": alerts(row, new, built, rules),
    }


_HISTORY_COLUMNS = ("buildid", "config_symbols", "warnings", "bzimage_bytes", "make_s")


def branch_history(session: Session, row: Mapping[str, Any], limit: int) -> list[dict[str, Any]]:
    """The earlier builds of the row's branch and profile, newest first."""
    if not row.get("branch"):
        return []
    stmt = select(*(getattr(KernelBuild, c) for c in _HISTORY_COLUMNS)).where(
        KernelBuild.branch == row["branch"],
        KernelBuild.config_symbols.is_not(None) | KernelBuild.warnings.is_not(None),
    )
    stmt = stmt.where(KernelBuild.profile == row["profile"]) if row.get("profile") else \
        stmt.where(KernelBuild.profile.is_(None))
    if row.get("buildid") is not None:
        stmt = stmt.where(KernelBuild.buildid != row["buildid"])
    if row.get("started_at") is not None:
        stmt = stmt.where(KernelBuild.started_at < to_time("started_at", row["started_at"]))
    stmt = stmt.order_by(KernelBuild.started_at.desc().nulls_last(), KernelBuild.id.desc())
    return [dict(zip(_HISTORY_COLUMNS, r, strict=True))
            for r in session.execute(stmt.limit(limit))]


def insert_compared(engine: Engine, row: Mapping[str, Any], rules: AlertRules | None = None) -> int:
    """:func:`~master.records.queries.insert_build` with the comparison filled in."""
    rules = rules or AlertRules()
    clean = validate_build_row(row)
    with Session(engine) as session:
        history = branch_history(session, clean, max(rules.window, 1))
    clean.update(compare(clean, history, rules))
    return queries.insert_build(engine, clean)
