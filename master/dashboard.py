"""Kernel build pages inside Buildbot's web UI (a buildbot-wsgi-dashboards Flask app).

``index.html`` is the fragment Buildbot's React shell fetches and shows under
its own menu entry; the other pages (branch history, kernel cache, trends,
matrix grid) are plain pages under ``/plugins/wsgi_dashboards/<name>/`` linked
from it. Flask runs in the reactor's thread pool, so the synchronous
``queries`` calls here never block the reactor. The records' part of the
config (:mod:`master.records.part`) adds :func:`dashboard_config`'s entry.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, abort, current_app, render_template, request, url_for
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ktstr_steps import cache
from ktstr_steps.results import PHASES, RECORDED_OUTCOMES, Outcome
from master.records import db, queries

TEMPLATES = Path(__file__).resolve().parent / "templates"
DEFAULT_NAME = "ktstr"

# Outcome → CSS colour, shared by badges and the trend bars; "none" is a row without one.
OUTCOME_COLOURS: dict[str, str] = {
    Outcome.CACHED: "#2e7d32",
    Outcome.CACHE_HIT: "#1565c0",
    Outcome.REMOTE_HIT: "#1565c0",  # a hit like cache-hit, from another host's build
    Outcome.DIRTY_NOT_CACHED: "#ef6c00",
    Outcome.NON_GIT_NOT_CACHED: "#8d6e63",
    Outcome.CHANGED_DURING_BUILD: "#f9a825",
    Outcome.STORE_FAILED: "#ad1457",
    Outcome.FAILED: "#c62828",
    Outcome.CANCELLED: "#757575",
    Outcome.INTERRUPTED: "#6a1b9a",
    "none": "#bdbdbd",
}


class _Records:
    """The dashboard's engine, opened on first use: the master may start before the
    records service has created the SQLite file, and the page must say so, not 500."""

    def __init__(self, url: str | Engine) -> None:
        self._url = url
        self._engine: Engine | None = url if isinstance(url, Engine) else None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return db.safe_url(self._engine.url if self._engine is not None else self._url)

    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                engine = db.make_engine(self._url, must_exist=True)
                db.check_schema(engine)
                self._engine = engine
            return self._engine


def _live_cache(root: str | None) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The kernel cache on this master's disk, by ktstr's root rule unless ``root`` is given.

    Returns (entries, note). The listing is a bonus: when the root cannot be
    resolved or read, the page shows the note and the records half still renders.
    """
    try:
        root = str(root) if root is not None else str(cache.cache_root())
        raw = cache.list_entries(Path(root))
    except Exception as exc:  # KtstrError for the root, OSError or anything from a bad entry
        return None, f"cannot list the kernel cache at {root or 'its root'}: {exc}"
    out = []
    for e in raw or []:
        if dataclasses.is_dataclass(e) and not isinstance(e, type):
            d = dataclasses.asdict(e)
        elif isinstance(e, Mapping):
            d = dict(e)
        else:
            d = dict(getattr(e, "__dict__", {})) or {"key": str(e)}
        meta = d.get("metadata") if isinstance(d.get("metadata"), Mapping) else {}
        flat = {**meta, **{k: v for k, v in d.items() if k != "metadata"}}
        details = {
            k: v
            for k, v in flat.items()
            if k not in ("key", "cache_key", "name") and not isinstance(v, Mapping | list)
        }
        if isinstance(flat.get("source"), Mapping):
            # ktstr's KernelSource: {"type": "git", "git_hash": ..., "ref": ...} on one line.
            details["source"] = " ".join(str(v) for v in flat["source"].values() if v is not None)
        out.append(
            {
                "key": flat.get("key") or flat.get("cache_key") or flat.get("name") or "?",
                "details": details,
            }
        )
    return out, f"{len(out)} entries in {root}"


def build_link(row: Mapping[str, Any]) -> str | None:
    """The Buildbot UI page of a recorded build.

    4.3's React UI routes only ``#/builders/<builderid>/builds/<number>``, so
    rows carry both; older rows with just a buildid are resolved through the
    Data API when the dashboard runs inside the master, else link to REST.
    """
    root = _bb_root()
    if row.get("builderid") is not None and row.get("build_number") is not None:
        return f"{root}/#/builders/{row['builderid']}/builds/{row['build_number']}"
    buildid = row.get("buildid")
    if buildid is None:
        return None
    api = getattr(current_app, "buildbot_api", None)
    if api is not None:
        try:
            b = api.dataGet(("builds", buildid))
        except Exception:
            b = None
        if b:
            return f"{root}/#/builders/{b['builderid']}/builds/{b['number']}"
    return f"{root}/api/v2/builds/{buildid}"


def _bb_root() -> str:
    """Buildbot's root path: the app is mounted at <root>/plugins/wsgi_dashboards/<name>."""
    script = request.script_root or ""
    marker = "/plugins/wsgi_dashboards/"
    return script.split(marker, 1)[0] if marker in script else ""


# Record and run ids are SQL integers.
ID_MAX = 2**63 - 1


def int_arg(name: str, default: int | None, lo: int, hi: int) -> int | None:
    """Query parameter ``name`` as an integer from ``lo`` to ``hi``; anything else is a 400."""
    text = request.args.get(name)
    if text is None or text == "":
        return default
    what = f"{name} must be an integer from {lo} to {hi}"
    try:
        value = int(text)
    except ValueError:
        abort(400, f"{what}, not {text[:40]!r}")
    if not lo <= value <= hi:
        abort(400, f"{what}, not {text[:40]}")
    return value


def _fmt_time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


def _fmt_secs(value: Any) -> str:
    if value is None:
        return ""
    if value >= 60:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{value:.1f}s"


def _duration(row: Mapping[str, Any]) -> str:
    if row.get("started_at") and row.get("finished_at"):
        return _fmt_secs((row["finished_at"] - row["started_at"]).total_seconds())
    return ""


def create_app(db_url: str | Engine | None = None, *, cache_root: str | None = None,
               name: str = DEFAULT_NAME) -> Flask:  # fmt: skip
    """The Flask app; ``db_url`` a URL or an Engine (tests), default as the service's."""
    app = Flask(f"ktstr_dashboard_{name}", template_folder=str(TEMPLATES))
    records = _Records(db_url if db_url is not None else db.default_url())
    app.extensions["ktstr_records"] = records

    app.jinja_env.globals.update(
        build_link=build_link,
        fmt_time=_fmt_time,
        fmt_secs=_fmt_secs,
        duration=_duration,
        colours=OUTCOME_COLOURS,
        phases=PHASES,
        outcomes=RECORDED_OUTCOMES,
        bb_root=_bb_root,
        dashboard_name=name,
    )

    def render(template: str, *, fragment: bool = False, **ctx: Any) -> str:
        return render_template(template, standalone=not fragment, db_url=records.url, **ctx)

    def engine_or_message(fragment: bool = False) -> Engine | str:
        try:
            return records.engine()
        except db.RecordsError as exc:
            return render("_unavailable.html", fragment=fragment, message=str(exc))

    @app.errorhandler(SQLAlchemyError)
    def _db_error(exc: SQLAlchemyError):  # a DB outage is a page, not a traceback
        msg = f"records database error: {getattr(exc, 'orig', exc)}"
        return render("_unavailable.html", message=msg), 503

    @app.route("/index.html")
    def index():
        eng = engine_or_message(fragment=True)
        if isinstance(eng, str):
            return eng
        return render(
            "index.html",
            fragment=True,
            branches=queries.branches(eng),
            counts=queries.outcome_counts(eng),
            recent=queries.recent_builds(eng, limit=15),
            runs=queries.matrix_runs(eng, limit=5),
        )

    @app.route("/branch.html")
    def branch():
        name_ = request.args.get("name")
        if not name_:
            abort(400, "branch.html needs ?name=<branch>")
        limit = int_arg("limit", 100, 1, 1000)
        eng = engine_or_message()
        if isinstance(eng, str):
            return eng
        return render(
            "branch.html",
            branch=name_,
            rows=queries.branch_history(eng, name_, limit=limit),
            counts=queries.outcome_counts(eng, branch=name_),
        )

    @app.route("/cache.html")
    def cache():
        eng = engine_or_message()
        if isinstance(eng, str):
            return eng
        live, note = _live_cache(cache_root)
        return render("cache.html", entries=queries.cache_entries(eng), live=live, live_note=note)

    @app.route("/trends.html")
    def trends():
        days = int_arg("days", 14, 1, 365)
        eng = engine_or_message()
        if isinstance(eng, str):
            return eng
        trend = queries.outcome_trend(eng, days=days)
        peak = max((d["total"] for d in trend), default=0)
        return render(
            "trends.html", trend=trend, peak=peak, counts=queries.outcome_counts(eng), days=days
        )

    @app.route("/matrix.html")
    def matrix():
        eng = engine_or_message()
        if isinstance(eng, str):
            return eng
        run_id = int_arg("id", None, 1, ID_MAX)
        if run_id is None:
            return render("matrix_list.html", runs=queries.matrix_runs(eng, limit=100))
        grid = queries.matrix_grid(eng, run_id)
        if grid is None:
            abort(404, f"no matrix run {run_id}")
        return render("matrix.html", grid=grid)

    app.jinja_env.globals["page"] = lambda endpoint, **kw: url_for(endpoint, **kw)
    return app


def dashboard_config(
    db_url: str | None = None,
    *,
    name: str = DEFAULT_NAME,
    caption: str = "Kernel builds",
    order: int = 5,
    icon: str = "FaMicrochip",
    cache_root: str | None = None,
) -> dict[str, Any]:
    """One entry for ``c['www']['plugins']['wsgi_dashboards']`` (a list of these)."""
    return {
        "name": name,
        "caption": caption,
        "app": create_app(db_url, cache_root=cache_root, name=name),
        "order": order,
        "icon": icon,
    }
