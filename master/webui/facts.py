"""What the pages show of one build: its phases, sizes, and why it rebuilt, what changed,
what got worse.

The fields below are the records' per-build identity, outputs and findings
(``identity``, the requested-vs-effective config lists, image sizes,
warnings as data, the rebuild explanation, the config diff against the
previous build of the branch, new warnings and tripped alerts). Rows written
before a field existed carry nothing for it, and the pages show "—" there.

:func:`with_facts` reads those fields from the database where its
``kernel_builds`` table has the columns, also when the ORM model does not
(yet) map them, so a database migrated ahead of this code, or a test that adds
the columns, shows them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import column, inspect, select, table
from sqlalchemy.engine import Engine

from ktstr_steps.results import PHASES
from master.records.models import BUILD_COLUMNS

NONE = "—"

# Structured fields (JSON in the database) and plain ones.
JSON_FIELDS: tuple[str, ...] = (
    "identity",
    "config_overrides",
    "config_dropped",
    "warnings",
    "config_diff",
    "new_warnings",
    "alerts",
)
SIZE_FIELDS: tuple[str, ...] = ("bzimage_bytes", "vmlinux_bytes", "vmlinux_stripped_bytes")
FACT_FIELDS: tuple[str, ...] = (*JSON_FIELDS, "explanation", *SIZE_FIELDS)


def _db_columns(engine: Engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("kernel_builds")}


def _decoded(value: Any) -> Any:
    # SQLite hands back a JSON column the model does not map as its text.
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def with_facts(engine: Engine, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows (dicts with ``id``) with every fact field the database has; in place."""
    unmapped = [f for f in FACT_FIELDS if f not in BUILD_COLUMNS]
    if not rows or not unmapped:
        return rows
    present = [f for f in unmapped if f in _db_columns(engine)]
    if not present:
        return rows
    by_id = {r["id"]: r for r in rows if r.get("id") is not None}
    t = table("kernel_builds", column("id"), *(column(f) for f in present))
    ids = sorted(by_id)
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):  # SQLite's bound-parameter cap
            chunk = ids[start : start + 500]
            for found in conn.execute(select(t).where(t.c.id.in_(chunk))).mappings():
                row = by_id[found["id"]]
                for f in present:
                    v = found[f]
                    row[f] = _decoded(v) if f in JSON_FIELDS else v
    return rows


def phases(row: Mapping[str, Any]) -> dict[str, float | None]:
    """Seconds per pipeline phase, in pipeline order (None: the phase did not run)."""
    return {p: row.get(f"{p}_s") for p in PHASES}


def total_seconds(row: Mapping[str, Any]) -> float | None:
    """The phases' sum: the build's own work, without queueing."""
    values = [v for v in phases(row).values() if v is not None]
    return round(sum(values), 3) if values else None


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []


def alerts(row: Mapping[str, Any]) -> list[str]:
    return [str(a) for a in _list(row.get("alerts"))]


def new_warnings(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [w for w in _list(row.get("new_warnings")) if isinstance(w, Mapping)]


def config_diff(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"added": {sym: val} | [sym], "removed": ..., "changed": {sym: [old, new]}}`` or None."""
    diff = row.get("config_diff")
    if not isinstance(diff, Mapping):
        return None

    def pairs(value: Any) -> list[tuple[str, str]]:
        if isinstance(value, Mapping):
            return [(str(k), "" if v is None else str(v)) for k, v in sorted(value.items())]
        return [(str(v), "") for v in _list(value)]

    changed = diff.get("changed") if isinstance(diff.get("changed"), Mapping) else {}
    return {
        "added": pairs(diff.get("added")),
        "removed": pairs(diff.get("removed")),
        "changed": [
            (str(sym), *(list(map(str, ch)) + ["", ""])[:2])
            for sym, ch in sorted(changed.items())
            if isinstance(ch, Sequence) and not isinstance(ch, str)
        ],
    }


def identity_lines(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The build identity as (label, value) lines, for a details panel."""
    ident = row.get("identity")
    if not isinstance(ident, Mapping):
        return []
    out: list[tuple[str, str]] = []
    for key, value in ident.items():
        if isinstance(value, Mapping):
            text = ", ".join(f"{k} {v}" for k, v in value.items() if v not in (None, ""))
        elif isinstance(value, list):
            text = ", ".join(
                " ".join(str(x) for x in v.values()) if isinstance(v, Mapping) else str(v)
                for v in value
            )
        else:
            text = "" if value is None else str(value)
        out.append((str(key), text or NONE))
    return out


def fmt_bytes(value: Any) -> str:
    """Sizes as people read them (binary units, three significant digits), "—" when unknown."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return NONE
    n = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1000 or unit == "GiB":
            break
        n /= 1024
    if unit == "B" or n >= 100:
        return f"{n:.0f} {unit}"
    return f"{n:.1f} {unit}" if n >= 10 else f"{n:.2f} {unit}"


def has_details(row: Mapping[str, Any]) -> bool:
    """Whether the build has anything for its expandable details row."""
    return bool(
        row.get("explanation")
        or config_diff(row)
        or new_warnings(row)
        or alerts(row)
        or identity_lines(row)
        or _list(row.get("config_dropped"))
        or _list(row.get("config_overrides"))
        or row.get("error")
    )


def json_build(row: Mapping[str, Any], link: str | None) -> dict[str, Any]:
    """One build for the pages' JSON: the row, its link, phases and total, every fact field."""
    out = dict(row)
    for f in FACT_FIELDS:
        out.setdefault(f, None)
    out["link"] = link
    out["phases"] = phases(row)
    out["total_s"] = total_seconds(row)
    return out
