"""The data of each kernel build page, one function per page, for its HTML and its JSON.

Every function takes the records engine and ``link``, which gives a row's
Buildbot build page (or None), and returns plain dicts: the templates render
them, the ``.json`` routes return them as they are (datetimes as ISO 8601).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ktstr_steps import cache
from ktstr_steps.results import CACHED_OUTCOMES, Outcome
from master.records import queries
from master.records.models import BUILD_COLUMNS, KernelBuild
from master.webui import charts, facts

Link = Callable[[Mapping[str, Any]], str | None]

# How many builds a plot shows: the newest, drawn oldest first.
SPARK_BUILDS = 20
TREND_BUILDS = 500
# Rows the cache table folds into per-key lines (the newest ones).
CACHE_ROWS = 5000


def _builds(engine: Engine, rows: list[dict[str, Any]], link: Link) -> list[dict[str, Any]]:
    facts.with_facts(engine, rows)
    return [facts.json_build(r, link(r)) for r in rows]


def _plots(builds: list[dict[str, Any]], label: charts.Label = charts.build_label
           ) -> dict[str, Any]:  # fmt: skip
    """The three plots of a series of builds (newest first in, oldest first drawn)."""
    series = list(reversed(builds))
    links = [b["link"] for b in series]
    return {
        "links": links,
        "phases": charts.phases_chart(series, label),
        "warnings": charts.warnings_chart(series, label),
        "sizes": charts.sizes_chart(series, label),
    }


def overview(engine: Engine, link: Link) -> dict[str, Any]:
    """Each branch with its last build, alerts and a small trend; recent alerts; matrix runs."""
    branches = []
    for b in queries.branches(engine):
        recent = _builds(engine, queries.branch_history(engine, b["branch"], limit=SPARK_BUILDS),
                         link)  # fmt: skip
        last = recent[0] if recent else None
        series = list(reversed(recent))
        branches.append({
            "branch": b["branch"],
            "builds": b["builds"],
            "last": last,
            "alerts": facts.alerts(last) if last else [],
            "trend": charts.sparkline(series),
            "trend_links": [r["link"] for r in series],
        })  # fmt: skip
    recent_all = _builds(engine, queries.recent_builds(engine, limit=100), link)
    return {
        "branches": branches,
        "alerts": [
            {"build": r, "alerts": facts.alerts(r)} for r in recent_all if facts.alerts(r)
        ],
        "recent": recent_all[:15],
        "counts": queries.outcome_counts(engine),
        "matrix_runs": queries.matrix_runs(engine, limit=5),
    }


def branch(engine: Engine, name: str, link: Link, limit: int) -> dict[str, Any]:
    """One branch's builds (newest first) and its plots."""
    builds = _builds(engine, queries.branch_history(engine, name, limit=limit), link)
    return {
        "branch": name,
        "builds": builds,
        "counts": queries.outcome_counts(engine, branch=name),
        "plots": _plots(builds),
    }


def trends(engine: Engine, link: Link, *, days: int = 30, limit: int = TREND_BUILDS,
           now: dt.datetime | None = None) -> dict[str, Any]:  # fmt: skip
    """The branch plots across every branch, one set per profile, of the last ``days`` days."""
    since = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days)
    rows = [r for r in queries.recent_builds(engine, limit=limit)
            if r.get("started_at") is None or r["started_at"] >= since]  # fmt: skip
    builds = _builds(engine, rows, link)
    by_profile: dict[str, list[dict[str, Any]]] = {}
    for b in builds:
        by_profile.setdefault(b.get("profile") or "(no profile)", []).append(b)
    return {
        "profiles": [
            {"profile": p, "builds": rows, "plots": _plots(rows, charts.branch_label)}
            for p, rows in sorted(by_profile.items())
        ],
        "counts": queries.outcome_counts(engine),
        "days": days,
    }


def _when(row: Mapping[str, Any]) -> Any:
    return row.get("finished_at") or row.get("started_at")


def cache_table(engine: Engine, link: Link) -> list[dict[str, Any]]:
    """One line per cache key: who built it, when, its identity and sizes, when it was last used.

    "Built by" is the first build that stored the key; a key only ever hit
    (stored by ktstr itself or another service) shows its first recorded use.
    """
    stmt = (
        select(KernelBuild)
        .where(
            KernelBuild.cache_key.is_not(None),
            KernelBuild.kernel_outcome.in_(sorted(o.value for o in CACHED_OUTCOMES)),
        )
        .order_by(KernelBuild.id.desc())
        .limit(CACHE_ROWS)
    )
    with Session(engine) as session:
        rows = [{c: getattr(o, c) for c in ("id", *BUILD_COLUMNS)} for o in session.scalars(stmt)]
    facts.with_facts(engine, rows)
    keys: dict[str, list[dict[str, Any]]] = {}
    for r in reversed(rows):  # oldest first
        keys.setdefault(r["cache_key"], []).append(r)
    out = []
    for key, uses in keys.items():
        stored = [r for r in uses if r.get("kernel_outcome") == Outcome.CACHED]
        built = stored[0] if stored else uses[0]
        last = max(uses, key=lambda r: (_when(r) is not None, _when(r) or 0, r["id"]))
        out.append({
            "cache_key": key,
            "commit": built.get("revision"),
            "kernel_version": built.get("kernel_version"),
            "profile": built.get("profile"),
            **{f: built.get(f) for f in facts.SIZE_FIELDS},
            "built_at": _when(built) if stored else None,
            "built_by": {"id": built["id"], "buildid": built.get("buildid"),
                         "builder": built.get("builder"), "number": built.get("build_number"),
                         "link": link(built)} if stored else None,
            "last_used": _when(last),
            "last_used_by": {"id": last["id"], "buildid": last.get("buildid"), "builder": last.get("builder"),
                             "number": last.get("build_number"), "link": link(last),
                             "outcome": last.get("kernel_outcome")},
            "uses": len(uses),
        })  # fmt: skip
    out.sort(key=lambda e: (e["last_used"] is not None, e["last_used"] or 0,
                            e["last_used_by"]["id"]), reverse=True)  # fmt: skip
    return out


def live_cache(root: str | None) -> tuple[list[dict[str, Any]] | None, str]:
    """The kernel cache on this master's disk (ktstr's root rule unless ``root``), as rows.

    A bonus beside the records: when the root cannot be read the page shows
    the note, and the records' table still renders.
    """
    try:
        base = str(root) if root is not None else str(cache.cache_root())
        entries = cache.list_entries(Path(base))
    except Exception as exc:  # KtstrError for the root, OSError or anything from a bad entry
        return None, f"cannot list the kernel cache at {root or 'its root'}: {exc}"
    out = []
    for e in entries:
        meta = getattr(e, "metadata", None)
        if meta is None:
            out.append({"key": e.key, "corrupt": getattr(e, "reason", "corrupt")})
            continue
        try:
            image_bytes: int | None = os.stat(e.image_path).st_size
        except OSError:
            image_bytes = None
        src = meta.source
        out.append({
            "key": e.key,
            "version": meta.version,
            "source": " ".join(x for x in (src.type, (src.git_hash or "")[:12], src.ref or "") if x),
            "arch": meta.arch,
            "built_at": meta.built_at,
            "config_hash": meta.config_hash,
            "image": meta.image_name,
            "image_bytes": image_bytes,
            "vmlinux": ("stripped" if meta.vmlinux_stripped else "yes") if meta.has_vmlinux
            else "no",
            "corrupt": None,
        })  # fmt: skip
    return out, f"{len(out)} entries in {base}"
