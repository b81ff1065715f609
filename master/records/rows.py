"""A ``kernel_builds`` row before it reaches the database: checked and normalised.

:func:`validate_build_row` names every problem of a row (unknown keys, wrong
types, unknown outcomes or results, text over a column's limit) before
anything is written, so the records service, its spool and the reconciliation
of unrecorded builds all refuse the same rows the same way;
:func:`row_from_result` makes a row from the build result object.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from typing import Any

from ktstr_steps.cpulist import format_cpulist
from master.records.db import InvalidRecord
from master.records.models import BUILD_COLUMNS, OUTCOMES, PHASES, RESULTS, KernelBuild

_INT = {
    "buildid", "builderid", "build_number", "llc_index", "make_jobs", "make_warnings",
    "overrides_count", "dropped_count", "matrix_run_id",
    "bzimage_bytes", "vmlinux_bytes", "vmlinux_stripped_bytes",
}  # fmt: skip
# JSON columns and the shape each holds: a mapping, or a list of mappings (or of text).
_JSON_MAP = {"identity", "config_symbols", "config_diff"}
_JSON_LIST = {"config_overrides", "config_dropped", "warnings", "new_warnings"}
_JSON_TEXTS = {"alerts"}
_JSON = _JSON_MAP | _JSON_LIST | _JSON_TEXTS
_FLOAT = {f"{p}_s" for p in PHASES}
_TIME = {"started_at", "finished_at"}
_BOOL = {"dirty"}
# String columns and their limits, read from the model so the two never drift apart.
_STR = {
    c.name: getattr(c.type, "length", None)
    for c in KernelBuild.__table__.columns
    if c.name in BUILD_COLUMNS and c.name not in _INT | _FLOAT | _TIME | _BOOL | _JSON
}
# Convenience keys turned into columns by validate_build_row.
_EXTRA_KEYS = ("phases",)


def to_time(key: str, value: Any) -> dt.datetime:
    """A datetime, epoch seconds or ISO 8601 text as an aware UTC datetime (``key`` names it
    in the error)."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, bool):
        raise InvalidRecord(f"{key}: expected a datetime, epoch seconds or ISO 8601, got {value!r}")
    if isinstance(value, int | float):
        # Buildbot's own timestamps are epoch seconds.
        return dt.datetime.fromtimestamp(value, dt.UTC)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    raise InvalidRecord(f"{key}: expected a datetime, epoch seconds or ISO 8601, got {value!r}")


def _check_value(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key in _INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRecord(f"{key}: expected an integer, got {value!r}")
        return value
    if key in _JSON:
        return _check_json(key, value)
    if key in _FLOAT:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRecord(f"{key}: expected seconds as a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise InvalidRecord(f"{key}: expected non-negative finite seconds, got {value!r}")
        return float(value)
    if key in _BOOL:
        if not isinstance(value, bool):
            raise InvalidRecord(f"{key}: expected true or false, got {value!r}")
        return value
    if key in _TIME:
        return to_time(key, value)
    if key == "llc_cpus" and isinstance(value, list | tuple):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in value):
            raise InvalidRecord(f"llc_cpus: expected CPU ids, got {value!r}")
        value = format_cpulist(value)
    if key == "result" and isinstance(value, int) and not isinstance(value, bool):
        # Buildbot result integers (SUCCESS=0 ... CANCELLED=6) are accepted as names.
        if not 0 <= value < len(RESULTS):
            raise InvalidRecord(f"result: unknown Buildbot result {value!r}")
        value = RESULTS[value]
    if not isinstance(value, str):
        raise InvalidRecord(f"{key}: expected text, got {value!r}")
    limit = _STR.get(key)
    if limit is not None and len(value) > limit:
        raise InvalidRecord(f"{key}: longer than {limit} characters ({len(value)})")
    if key == "kernel_outcome" and value not in OUTCOMES:
        raise InvalidRecord(
            f"kernel_outcome: unknown outcome {value!r} (expected one of {', '.join(OUTCOMES)})"
        )
    if key == "result" and value not in RESULTS:
        raise InvalidRecord(
            f"result: unknown Buildbot result {value!r} (expected one of {', '.join(RESULTS)})"
        )
    return value


def _check_json(key: str, value: Any) -> Any:
    if key in _JSON_MAP and not isinstance(value, Mapping):
        raise InvalidRecord(f"{key}: expected a JSON object, got {value!r:.80}")
    if key in _JSON_LIST and not (
        isinstance(value, list) and all(isinstance(v, Mapping) for v in value)
    ):
        raise InvalidRecord(f"{key}: expected a list of JSON objects, got {value!r:.80}")
    if key in _JSON_TEXTS and not (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    ):
        raise InvalidRecord(f"{key}: expected a list of texts, got {value!r:.80}")
    try:
        # What the database's JSON type will store: plain JSON, nothing else.
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(f"{key}: not JSON ({exc})") from None


def validate_build_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Check and normalise one ``kernel_builds`` row; raise :class:`InvalidRecord` with every
    problem named, before anything touches the database.

    Accepted keys: the columns in ``models.BUILD_COLUMNS`` plus ``phases``, the
    ``{"make": 30.5, ...}`` map of the build result object, which fills the
    ``<phase>_s`` columns. ``llc_cpus`` may be a list of CPU ids, ``result`` a
    Buildbot result integer, times datetimes / epoch seconds / ISO strings.
    """
    if not isinstance(row, Mapping):
        raise InvalidRecord(f"a build record must be a mapping, got {type(row).__name__}")
    unknown = sorted(k for k in row if k not in BUILD_COLUMNS and k not in _EXTRA_KEYS)
    if unknown:
        raise InvalidRecord(
            f"unknown build record key(s): {', '.join(map(str, unknown))} "
            f"(accepted: {', '.join(BUILD_COLUMNS + _EXTRA_KEYS)})"
        )
    out: dict[str, Any] = {}
    problems: list[str] = []
    phases = row.get("phases")
    if phases is not None:
        if not isinstance(phases, Mapping):
            problems.append(f"phases: expected a mapping of phase to seconds, got {phases!r}")
        else:
            for name, secs in phases.items():
                if name not in PHASES:
                    problems.append(f"phases: unknown phase {name!r} (known: {', '.join(PHASES)})")
                    continue
                try:
                    out[f"{name}_s"] = _check_value(f"{name}_s", secs)
                except InvalidRecord as exc:
                    problems.append(str(exc))
    for key, value in row.items():
        if key in _EXTRA_KEYS:
            continue
        try:
            out[key] = _check_value(key, value)
        except InvalidRecord as exc:
            problems.append(str(exc))
    if problems:
        raise InvalidRecord("invalid build record: " + "; ".join(problems))
    return out


def row_from_result(result: Mapping[str, Any], **build: Any) -> dict[str, Any]:
    """A ``kernel_builds`` row from the build result object (docs/contracts.md) plus the
    Buildbot side of the build (``buildid``, ``branch``, ``worker``, ...) as keywords.

    Keywords win over the result object, so the record step can override (for
    example ``kernel_outcome="cancelled"`` for a stopped build).
    """
    row: dict[str, Any] = {}
    for key in (
        "cache_key", "entry_dir", "image_path", "config_hash", "kconfig_hash",
        "extra_kconfig_hash", "dirty", "profile", "make_jobs", "make_warnings",
    ):  # fmt: skip
        if result.get(key) is not None:
            row[key] = result[key]
    if result.get("outcome") is not None:
        row["kernel_outcome"] = result["outcome"]
    if result.get("version") is not None:
        row["kernel_version"] = result["version"]
    if result.get("git_hash") is not None:
        row["revision"] = result["git_hash"]
    if result.get("llc_cpus") is not None:
        row["llc_cpus"] = result["llc_cpus"]
    llcs = result.get("llcs")
    if isinstance(llcs, list) and len(llcs) == 1:
        row["llc_index"] = llcs[0]
    if isinstance(result.get("overrides"), list):
        row["overrides_count"] = len(result["overrides"])
    if isinstance(result.get("dropped"), list):
        row["dropped_count"] = len(result["dropped"])
    errors = result.get("errors")
    if isinstance(errors, list) and errors:
        row["error"] = "\n".join(
            f"{e.get('kind', 'error')}: {e.get('message', '')}"
            if isinstance(e, Mapping)
            else str(e)
            for e in errors
        )
    if isinstance(result.get("phases"), Mapping):
        row["phases"] = dict(result["phases"])
    row.update(identity_columns(result))
    row.update(build)
    return row


# Result-object fields kept as they are (migration 0003), and the one renamed:
# the result's "warnings" are human lines, its "build_warnings" make's warnings as data.
IDENTITY_FIELDS = (
    "identity", "explanation", "config_overrides", "config_dropped", "config_symbols",
    "bzimage_bytes", "vmlinux_bytes", "vmlinux_stripped_bytes",
)  # fmt: skip


def identity_columns(result: Mapping[str, Any]) -> dict[str, Any]:
    """The identity and output columns of a row, from the build result object."""
    row = {k: result[k] for k in IDENTITY_FIELDS if result.get(k) is not None}
    if isinstance(result.get("build_warnings"), list):
        row["warnings"] = result["build_warnings"]
    return row
