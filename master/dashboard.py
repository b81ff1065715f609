"""The kernel build pages' server: a Flask app that renders each page and its JSON.

Buildbot's React shell shows the pages inside its own menu (the ``ktstr`` www
plugin, :mod:`master.webui`, mounts this app at ``plugins/ktstr/dash/``):
each of its routes fetches ``<page>.html?fragment=1`` and draws the page's
plots. Without ``fragment=1`` a page is a whole document (for a direct look);
``<page>.json`` is the same page's data for scripts. Links between pages are
the shell's routes (``#/ktstr/...``), so navigation stays in the app.

Flask runs in the reactor's thread pool, so the synchronous ``queries`` calls
here never block the reactor.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from flask import Flask, abort, current_app, jsonify, render_template, request
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ktstr_steps.results import PHASES, RECORDED_OUTCOMES, Outcome
from master import webui
from master.records import db, queries
from master.webui import charts, facts, pages

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
    """Buildbot's root path: the app is mounted at <root>/plugins/ktstr/dash."""
    script = request.script_root or ""
    marker = "/plugins/"
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


# Page endpoint -> the shell's route of that page (scripts.js registers the same routes).
ROUTES: dict[str, str] = {
    "index": "ktstr",
    "branch": "ktstr/branch",
    "trends": "ktstr/trends",
    "cache": "ktstr/cache",
    "matrix": "ktstr/matrix",
}


def route_link(endpoint: str, **query: Any) -> str:
    """The shell's address of a page, e.g. ``/#/ktstr/branch?name=main``."""
    args = {k: v for k, v in query.items() if v is not None}
    qs = f"?{urlencode(args, quote_via=quote, safe='/')}" if args else ""
    return f"{_bb_root()}/#/{ROUTES[endpoint]}{qs}"


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
        page=route_link,
        facts=facts,
        canvas=charts.canvas,
        NONE=facts.NONE,
    )

    def render(template: str, **ctx: Any) -> str:
        fragment = request.args.get("fragment") == "1"
        return render_template(template, standalone=not fragment, db_url=records.url, **ctx)

    def engine_or_message() -> Engine | str:
        try:
            return records.engine()
        except db.RecordsError as exc:
            return render("_unavailable.html", message=str(exc))

    def engine_or_503() -> Engine:
        try:
            return records.engine()
        except db.RecordsError as exc:
            abort(503, str(exc))

    @app.errorhandler(SQLAlchemyError)
    def _db_error(exc: SQLAlchemyError):  # a DB outage is a page, not a traceback
        msg = f"records database error: {getattr(exc, 'orig', exc)}"
        if request.path.endswith(".json"):
            return jsonify({"error": msg}), 503
        return render("_unavailable.html", message=msg), 503

    def branch_name() -> str:
        name_ = request.args.get("name")
        if not name_:
            abort(400, "branch needs ?name=<branch>")
        return name_

    # Each page: (its data from the records, its template); HTML and JSON share the data.
    def index_data(eng: Engine) -> dict[str, Any]:
        return pages.overview(eng, build_link)

    def branch_data(eng: Engine) -> dict[str, Any]:
        return pages.branch(eng, branch_name(), build_link, limit=int_arg("limit", 100, 1, 1000))

    def trends_data(eng: Engine) -> dict[str, Any]:
        return pages.trends(eng, build_link, days=int_arg("days", 30, 1, 365),
                            limit=int_arg("limit", pages.TREND_BUILDS, 1, 5000))

    def cache_data(eng: Engine) -> dict[str, Any]:
        live, note = pages.live_cache(cache_root)
        return {"entries": pages.cache_table(eng, build_link), "live": live, "live_note": note}

    def matrix_data(eng: Engine) -> dict[str, Any]:
        run_id = int_arg("id", None, 1, ID_MAX)
        if run_id is None:
            return {"runs": queries.matrix_runs(eng, limit=100)}
        grid = queries.matrix_grid(eng, run_id)
        if grid is None:
            abort(404, f"no matrix run {run_id}")
        return {"grid": grid}

    pages_ = {"index": index_data, "branch": branch_data, "trends": trends_data,
              "cache": cache_data, "matrix": matrix_data}  # fmt: skip

    def html_view(page_name: str):
        def view():
            eng = engine_or_message()
            if isinstance(eng, str):
                return eng
            data = pages_[page_name](eng)
            template = page_name + ".html"
            if page_name == "matrix" and "grid" not in data:
                template = "matrix_list.html"
            return render(template, **data)
        return view

    def json_view(page_name: str):
        def view():
            return jsonify(queries.jsonable(pages_[page_name](engine_or_503())))
        return view

    for page_name in pages_:
        app.add_url_rule(f"/{page_name}.html", page_name, html_view(page_name))
        app.add_url_rule(f"/{page_name}.json", f"{page_name}_json", json_view(page_name))
    return app


def plugin_entry(db_url: str | None = None, *, cache_root: str | None = None) -> dict[str, Any]:
    """``c['www']['plugins']['ktstr']``: the pages' app for the ``ktstr`` www plugin."""
    return webui.plugin_config(create_app(db_url, cache_root=cache_root))
