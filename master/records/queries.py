"""Synchronous reads and writes of the records DB (no Twisted): the CLI, the dashboard and
the service (in its thread pool) all go through here.

Rows come in and go out as plain dicts keyed by column name; a row is checked
by :func:`master.records.rows.validate_build_row` before it is written;
datetimes go out as timezone-aware UTC ``datetime`` objects (see
:func:`jsonable` for JSON).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ktstr_steps.results import BUILT_OUTCOMES, CACHED_OUTCOMES, HIT_OUTCOMES, Outcome
from master.records.db import InvalidRecord
from master.records.models import BUILD_COLUMNS, KernelBuild, MatrixRun
from master.records.rows import to_time, validate_build_row

# ---------------------------------------------------------------- writes


def insert_build(engine: Engine, row: Mapping[str, Any], *, replace: bool = True) -> int:
    """Insert one build row, or update the row with the same ``buildid``; return its id.

    Update-by-buildid makes the record step idempotent: a retried or re-run
    step overwrites the columns it sends instead of adding a second row.
    ``replace=False`` only inserts: an existing row of the buildid is left as it
    is. The records service writes the rows of builds that ended without their
    record step that way, so whichever of the two writers comes first, the
    step's row is the one that stays.
    """
    clean = validate_build_row(row)
    buildid = clean.get("buildid")
    for _attempt in range(2):
        try:
            with Session(engine) as session, session.begin():
                if buildid is not None:
                    existing = session.scalar(
                        select(KernelBuild.id).where(KernelBuild.buildid == buildid)
                    )
                    if existing is not None:
                        if not replace:
                            return existing
                        fields = {k: v for k, v in clean.items() if k != "buildid"}
                        if fields:
                            session.execute(
                                update(KernelBuild)
                                .where(KernelBuild.id == existing)
                                .values(**fields)
                            )
                        return existing
                obj = KernelBuild(**clean)
                session.add(obj)
                session.flush()
                return obj.id
        except IntegrityError as exc:
            # Two writers raced on the same buildid: the second attempt sees the row.
            if buildid is None or "buildid" not in str(exc.orig).lower() or _attempt:
                raise InvalidRecord(f"build record rejected by the database: {exc.orig}") from exc
    raise AssertionError("unreachable")


def _check_names(what: str, values: Any) -> list[str]:
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) and v for v in values):
        raise InvalidRecord(f"{what}: expected a list of non-empty strings, got {values!r}")
    if len(set(values)) != len(values):
        raise InvalidRecord(f"{what}: duplicate entries in {list(values)!r}")
    return list(values)


def start_matrix_run(
    engine: Engine,
    *,
    versions: list[str],
    profiles: list[str],
    spec: str | None = None,
    buildid: int | None = None,
    started_at: dt.datetime | float | str | None = None,
) -> int:
    """Create a matrix run row (cells = versions × profiles); returns its id for the cells."""
    versions = _check_names("versions", versions)
    profiles = _check_names("profiles", profiles)
    if spec is not None and not isinstance(spec, str):
        raise InvalidRecord(f"spec: expected text, got {spec!r}")
    if buildid is not None and (isinstance(buildid, bool) or not isinstance(buildid, int)):
        raise InvalidRecord(f"buildid: expected an integer, got {buildid!r}")
    when = to_time("started_at", started_at) if started_at is not None else dt.datetime.now(dt.UTC)
    with Session(engine) as session, session.begin():
        run = MatrixRun(
            spec=spec,
            versions=versions,
            profiles=profiles,
            buildid=buildid,
            started_at=when,
            cells=len(versions) * len(profiles),
            built=0,
            cache_hits=0,
            failed=0,
        )
        session.add(run)
        session.flush()
        return run.id


def matrix_totals(engine: Engine, run_id: int) -> dict[str, int]:
    """built / cache_hits / failed counted from the run's recorded cells."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(KernelBuild.kernel_outcome, KernelBuild.result).where(
                KernelBuild.matrix_run_id == run_id
            )
        ).all()
    built = hits = failed = 0
    for outcome, result in rows:
        if outcome == Outcome.FAILED or result in ("failure", "exception", "cancelled"):
            failed += 1
        elif outcome in HIT_OUTCOMES:
            hits += 1
        elif outcome in BUILT_OUTCOMES:
            built += 1
    return {"built": built, "cache_hits": hits, "failed": failed}


def finish_matrix_run(
    engine: Engine,
    run_id: int,
    *,
    finished_at: dt.datetime | float | str | None = None,
    totals: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Close a matrix run; totals default to the counts of its recorded cells. Returns the run."""
    if totals is None:
        totals = matrix_totals(engine, run_id)
    bad = sorted(set(totals) - {"cells", "built", "cache_hits", "failed"})
    if bad:
        raise InvalidRecord(f"unknown matrix total(s): {', '.join(bad)}")
    for k, v in totals.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InvalidRecord(f"{k}: expected a non-negative integer, got {v!r}")
    when = (
        to_time("finished_at", finished_at) if finished_at is not None else dt.datetime.now(dt.UTC)
    )
    with Session(engine) as session, session.begin():
        run = session.get(MatrixRun, run_id)
        if run is None:
            raise InvalidRecord(f"no matrix run with id {run_id}")
        run.finished_at = when
        for k, v in totals.items():
            setattr(run, k, v)
        session.flush()
        return _run_dict(run)


# ---------------------------------------------------------------- reads


def _build_dict(obj: KernelBuild) -> dict[str, Any]:
    return {c: getattr(obj, c) for c in ("id", *BUILD_COLUMNS)}


def _run_dict(run: MatrixRun) -> dict[str, Any]:
    return {c.name: getattr(run, c.name) for c in MatrixRun.__table__.columns}


def _recent_order() -> tuple[Any, ...]:
    # Rows without a start time (never expected, but allowed) sort by insertion.
    return (KernelBuild.started_at.desc().nulls_last(), KernelBuild.id.desc())


def _limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidRecord(f"limit: expected a positive integer, got {limit!r}")
    return limit


def recent_builds(
    engine: Engine, limit: int = 20, branch: str | None = None
) -> list[dict[str, Any]]:
    """The newest builds first, optionally of one branch."""
    stmt = select(KernelBuild).order_by(*_recent_order()).limit(_limit(limit))
    if branch is not None:
        stmt = stmt.where(KernelBuild.branch == branch)
    with Session(engine) as session:
        return [_build_dict(b) for b in session.scalars(stmt)]


def recorded_buildids(engine: Engine, buildids: Iterable[int]) -> set[int]:
    """Which of these Buildbot build ids already have a row."""
    wanted = sorted({int(b) for b in buildids})
    found: set[int] = set()
    with engine.connect() as conn:
        # In chunks: SQLite caps the number of bound parameters of one statement.
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            found.update(
                conn.scalars(select(KernelBuild.buildid).where(KernelBuild.buildid.in_(chunk)))
            )
    return found


def branch_history(engine: Engine, branch: str, limit: int = 50) -> list[dict[str, Any]]:
    """One branch's builds, newest first (uses the (branch, started_at) index)."""
    return recent_builds(engine, limit=limit, branch=branch)


def get_build(
    engine: Engine, *, id: int | None = None, buildid: int | None = None
) -> dict[str, Any] | None:
    """One row by our id or by Buildbot's build id."""
    if (id is None) == (buildid is None):
        raise ValueError("pass exactly one of id= or buildid=")
    stmt = select(KernelBuild).where(
        KernelBuild.id == id if id is not None else KernelBuild.buildid == buildid
    )
    with Session(engine) as session:
        obj = session.scalar(stmt)
        return _build_dict(obj) if obj is not None else None


def branches(engine: Engine) -> list[dict[str, Any]]:
    """Every branch with its build count and its newest build (outcome, result, when)."""
    with Session(engine) as session:
        counts = dict(
            session.execute(
                select(KernelBuild.branch, func.count())
                .where(KernelBuild.branch.is_not(None))
                .group_by(KernelBuild.branch)
            ).all()
        )
        out = []
        for name, n in sorted(counts.items()):
            last = session.scalar(
                select(KernelBuild)
                .where(KernelBuild.branch == name)
                .order_by(*_recent_order())
                .limit(1)
            )
            out.append({"branch": name, "builds": n, "last": _build_dict(last) if last else None})
    out.sort(
        key=lambda b: b["last"]["started_at"] or dt.datetime.min.replace(tzinfo=dt.UTC),
        reverse=True,
    )
    return out


def outcome_counts(
    engine: Engine, branch: str | None = None, since: dt.datetime | None = None
) -> dict[str, int]:
    """How many builds ended in each kernel outcome (rows without one count as "none")."""
    stmt = select(KernelBuild.kernel_outcome, func.count()).group_by(KernelBuild.kernel_outcome)
    if branch is not None:
        stmt = stmt.where(KernelBuild.branch == branch)
    if since is not None:
        stmt = stmt.where(KernelBuild.started_at >= since)
    with engine.connect() as conn:
        return {(o or "none"): n for o, n in conn.execute(stmt).all()}


def outcome_trend(
    engine: Engine, days: int = 14, now: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """Outcome counts per UTC day for the last ``days`` days, oldest first, every day present.

    Bucketed in Python: date truncation differs between SQLite and PostgreSQL,
    and a fortnight of builds is small.
    """
    now = now or dt.datetime.now(dt.UTC)
    first = (now - dt.timedelta(days=days - 1)).date()
    since = dt.datetime.combine(first, dt.time(), dt.UTC)
    with Session(engine) as session:
        rows = session.execute(
            select(KernelBuild.started_at, KernelBuild.kernel_outcome).where(
                KernelBuild.started_at >= since
            )
        ).all()
    per_day: dict[dt.date, Counter[str]] = {first + dt.timedelta(d): Counter() for d in range(days)}
    for started, outcome in rows:
        day = started.astimezone(dt.UTC).date()
        if day in per_day:
            per_day[day][outcome or "none"] += 1
    return [
        {"day": day.isoformat(), "total": sum(c.values()), "outcomes": dict(c)}
        for day, c in sorted(per_day.items())
    ]


def cache_entries(engine: Engine, limit: int = 200) -> list[dict[str, Any]]:
    """Kernel cache entries as the records know them: per cache key, its newest build
    that stored or found it, and how many builds used it."""
    with Session(engine) as session:
        stats = session.execute(
            select(
                KernelBuild.cache_key,
                func.count(),
                func.max(KernelBuild.id),
            )
            .where(
                KernelBuild.cache_key.is_not(None),
                KernelBuild.kernel_outcome.in_(sorted(o.value for o in CACHED_OUTCOMES)),
            )
            .group_by(KernelBuild.cache_key)
            .order_by(func.max(KernelBuild.id).desc())
            .limit(_limit(limit))
        ).all()
        ids = [s[2] for s in stats]
        newest = {
            b.id: b for b in session.scalars(select(KernelBuild).where(KernelBuild.id.in_(ids)))
        }
        out = []
        for key, uses, last_id in stats:
            b = newest[last_id]
            out.append(
                {
                    "cache_key": key,
                    "uses": uses,
                    "last_build": _build_dict(b),
                }
            )
    return out


def recent_branches(engine: Engine, since: dt.datetime | float) -> list[tuple[str, str]]:
    """(repository, branch) of every build started since ``since`` that a push, a forced
    build or a poller asked for: the matrix's own cells do not keep a branch recent."""
    when = to_time("since", since)
    stmt = (
        select(KernelBuild.repository, KernelBuild.branch)
        .where(KernelBuild.started_at >= when, KernelBuild.branch.is_not(None),
               KernelBuild.repository.is_not(None), KernelBuild.matrix_run_id.is_(None))
        .distinct()
    )
    with engine.connect() as conn:
        return sorted((r, b) for r, b in conn.execute(stmt).all())


def matrix_runs(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    stmt = select(MatrixRun).order_by(MatrixRun.started_at.desc(), MatrixRun.id.desc())
    with Session(engine) as session:
        return [_run_dict(r) for r in session.scalars(stmt.limit(_limit(limit)))]


def matrix_grid(engine: Engine, run_id: int) -> dict[str, Any] | None:
    """A run as a grid: ``cells[version][profile]`` is the newest build of that cell or None.

    ``broke``: the (version, profile) cells that were green in the run before
    this one and are red now (what broke since the previous night); ``fixed``
    the other way round; ``previous`` that run's id.
    """
    with Session(engine) as session:
        run = session.get(MatrixRun, run_id)
        if run is None:
            return None
        builds = session.scalars(
            select(KernelBuild).where(KernelBuild.matrix_run_id == run_id).order_by(KernelBuild.id)
        ).all()
        cells: dict[str, dict[str, dict[str, Any] | None]] = {
            v: dict.fromkeys(run.profiles) for v in run.versions
        }
        stray = []
        for b in builds:
            row = _build_dict(b)
            if b.kernel_version in cells and b.profile in cells[b.kernel_version]:
                cells[b.kernel_version][b.profile] = row  # later rows (retries) win
            else:
                stray.append(row)
        previous = session.scalar(
            select(MatrixRun).where(MatrixRun.id < run_id).order_by(MatrixRun.id.desc()).limit(1)
        )
        before = _cell_states(session, previous.id) if previous is not None else {}
    now = {(v, p): cell_state(c) for v, ps in cells.items() for p, c in ps.items() if c}
    broke = [cell for cell, state in now.items() if state == "red" and before.get(cell) == "green"]
    fixed = [cell for cell, state in now.items() if state == "green" and before.get(cell) == "red"]
    return {"run": _run_dict(run), "cells": cells, "other_builds": stray,
            "previous": previous.id if previous is not None else None,
            "broke": broke, "fixed": fixed}


def matrix_changes(engine: Engine, run_id: int) -> dict[str, Any]:
    """``previous``, ``broke`` and ``fixed`` of :func:`matrix_grid` (cells as lists)."""
    grid = matrix_grid(engine, run_id)
    if grid is None:
        raise InvalidRecord(f"no matrix run with id {run_id}")
    return {"previous": grid["previous"], "broke": [list(c) for c in grid["broke"]],
            "fixed": [list(c) for c in grid["fixed"]]}


def cell_state(row: Mapping[str, Any] | None) -> str | None:
    """green (built or found in the cache), red (failed), or None (running, cancelled, ...)."""
    if row is None:
        return None
    outcome, result = row.get("kernel_outcome"), row.get("result")
    if outcome == Outcome.FAILED or result in ("failure", "exception"):
        return "red"
    if result in ("success", "warnings") and (
        outcome == Outcome.CACHE_HIT or outcome in BUILT_OUTCOMES
    ):
        return "green"
    return None


def _cell_states(session: Session, run_id: int) -> dict[tuple[str, str], str | None]:
    """(version, profile) -> cell_state of a run's cells; later rows (retries) win."""
    out: dict[tuple[str, str], str | None] = {}
    for b in session.scalars(
        select(KernelBuild).where(KernelBuild.matrix_run_id == run_id).order_by(KernelBuild.id)
    ):
        if b.kernel_version is not None and b.profile is not None:
            out[(b.kernel_version, b.profile)] = cell_state(_build_dict(b))
    return out


def jsonable(value: Any) -> Any:
    """Rows (or lists/dicts of them) with datetimes as ISO 8601 strings, for ``--json``."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return [jsonable(v) for v in value]
    return value
