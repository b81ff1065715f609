"""Downloadable kernels: bzImage, vmlinux, .config, metadata.json of every successful build.

The build's ``publish`` step (``ktstr_steps/buildsteps/publish.py``) uploads the
files to ``<[artifacts] dir>/<builder>/<buildnumber>/`` on the master. This module's
part of BuildmasterConfig (:func:`config_part`) holds the rest:

* :class:`ArtifactsService` (named ``ktstr_artifacts``; the step finds it by name):
  where the files go, their URLs, and the retention: at most ``max_builds`` build
  directories per builder (applied after each publish) and none older than
  ``max_age_days`` (a sweep at start and every ``sweep_minutes``);
* a Flask app in Buildbot's web server (``buildbot-wsgi-dashboards``), so the files
  are served by the master's own port, anonymously readable like the rest of the UI
  (with ``web.anonymous_read = false`` it asks for HTTP Basic auth with a web user):

  ``/plugins/wsgi_dashboards/artifacts/index.html``          recent builds (UI menu page)
  ``/plugins/wsgi_dashboards/artifacts/<builder>/<n>/``      one build's files, sizes, sha256
  ``/plugins/wsgi_dashboards/artifacts/<builder>/<n>/<file>``  the file (bzImage, vmlinux,
  .config, metadata.json, files.json, SHA256SUMS)

  Only those file names are ever served, the builder must be a plain name and the
  number an integer, and the resolved path must stay under the artifacts root: a
  ``..`` or encoded slash gets a 404, never a file from elsewhere.

The published cache entries are also the remote cache of every worker host:
:meth:`ArtifactsService.find_entry` finds the newest published entry of a
cache key (scanning ``files.json`` in a thread), and the steps' remote lookup
transfers its files to a worker that missed, with the sha256s recorded here
at publish time to check them against.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import html
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from buildbot import config
from buildbot.util import service
from flask import Flask, Response, abort, request
from twisted.internet import defer, task, threads
from twisted.python import log

from ktstr_steps.buildsteps.publish import PARTIAL_PREFIX
from ktstr_steps.buildsteps.services import ARTIFACTS_SERVICE_NAME
from ktstr_steps.bundle import MANIFEST, PUBLISHED_NAMES
from ktstr_steps.results import CACHED_OUTCOMES
from master.parts import ConfigPart
from settings import Settings, read_users

DASHBOARD_NAME = "artifacts"
URL_PATH = f"plugins/wsgi_dashboards/{DASHBOARD_NAME}/"
_BUILDER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$")
# A crashed publish leaves a .partial-* directory; older than this it is debris.
PARTIAL_MAX_AGE = 24 * 3600
_TEXT_FILES = {".config", "metadata.json", "files.json", "SHA256SUMS"}
_CHUNK = 1 << 20


# -- retention (plain functions: tests call them directly too) ---------------------------


def build_dirs(builder_root: Path) -> list[tuple[int, Path]]:
    """``(number, path)`` of a builder's published builds, oldest number first."""
    out = []
    try:
        entries = list(builder_root.iterdir())
    except FileNotFoundError:
        return []
    for p in entries:
        if p.name.isdigit() and p.is_dir() and not p.is_symlink():
            out.append((int(p.name), p))
    return sorted(out)


def published_at(build_dir: Path) -> float:
    """When a build was published: files.json's ``published_at``, else the directory's mtime."""
    try:
        text = json.loads((build_dir / MANIFEST).read_text())["published_at"]
        return dt.datetime.fromisoformat(text).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return build_dir.stat().st_mtime


def prune_builder(builder_root: Path, *, max_builds: int, max_age_days: int,
                  now: float | None = None) -> list[Path]:
    """Delete a builder's builds beyond the newest ``max_builds`` or older than
    ``max_age_days``, and stale partial uploads; returns what was deleted."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    dirs = build_dirs(builder_root)
    keep = dirs[-max_builds:] if max_builds else dirs
    for item in dirs:
        path = item[1]
        too_many = item not in keep
        too_old = bool(max_age_days) and now - published_at(path) > max_age_days * 86400
        if too_many or too_old:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    try:
        partials = [p for p in builder_root.iterdir() if p.name.startswith(PARTIAL_PREFIX)]
    except FileNotFoundError:
        partials = []
    for p in partials:
        try:
            if now - p.stat().st_mtime > PARTIAL_MAX_AGE:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def sweep(root: Path, *, max_builds: int, max_age_days: int,
          now: float | None = None) -> list[Path]:
    """:func:`prune_builder` over every builder directory under ``root``."""
    removed: list[Path] = []
    try:
        builders = [p for p in root.iterdir() if p.is_dir() and _BUILDER_RE.match(p.name)]
    except FileNotFoundError:
        return []
    for b in builders:
        removed += prune_builder(b, max_builds=max_builds, max_age_days=max_age_days, now=now)
    return removed


# -- the remote cache: a published entry by its cache key -----------------------------


def find_published(root: Path, cache_key: str) -> dict[str, Any] | None:
    """The newest published build whose kernel is cache entry ``cache_key``, or None.

    Only builds that published a cache entry (outcome ``cached``, ``cache-hit``
    or ``remote-hit``) count: a dirty or uncached build's files carry no key
    another host may trust. The answer holds the build directory, its builder
    directory and number, and ``files`` as recorded at publish time.
    """
    best: tuple[float, int, str] | None = None
    found: dict[str, Any] | None = None
    try:
        builders = [p for p in root.iterdir() if p.is_dir() and _BUILDER_RE.match(p.name)]
    except FileNotFoundError:
        return None
    for b in builders:
        for number, path in build_dirs(b):
            m = _manifest(path)
            if m.get("cache_key") != cache_key or m.get("outcome") not in CACHED_OUTCOMES:
                continue
            files = m.get("files")
            if not isinstance(files, dict):
                continue
            rank = (published_at(path), number, b.name)
            if best is None or rank > best:
                best = rank
                found = {"dir": str(path), "builder_dir": b.name, "number": number,
                         "files": files, "outcome": m.get("outcome"),
                         "builder": m.get("builder"), "branch": m.get("branch")}
    return found


class ArtifactsService(service.BuildbotService):
    """Paths, URLs and retention of published kernels (see the module docstring)."""

    name = ARTIFACTS_SERVICE_NAME

    def checkConfig(self, *, root: str, base_url: str, max_age_days: int = 30,  # type: ignore[override]
                    max_builds: int = 20, sweep_minutes: int = 60,
                    max_file_bytes: int | None = None) -> None:
        if not root:
            config.error("ArtifactsService needs a root directory")

    @defer.inlineCallbacks
    def reconfigService(self, *, root: str, base_url: str,  # type: ignore[override]
                        max_age_days: int = 30, max_builds: int = 20, sweep_minutes: int = 60,
                        max_file_bytes: int | None = None) -> Any:
        self.root = Path(root)
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.max_age_days = max_age_days
        self.max_builds = max_builds
        self.max_file_bytes = max_file_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        if getattr(self, "_loop", None) is not None and self._loop.running:
            self._loop.stop()
        self._loop = task.LoopingCall(self.sweep)
        self._interval = sweep_minutes * 60
        if self.running:
            self._loop.start(self._interval, now=True)
        yield super().reconfigService()

    def startService(self) -> Any:
        d = super().startService()
        if not self._loop.running:
            self._loop.start(self._interval, now=True)
        return d

    def stopService(self) -> Any:
        if self._loop.running:
            self._loop.stop()
        return super().stopService()

    def url_for(self, builder_dir: str, number: int, name: str = "") -> str:
        return f"{self.base_url}{URL_PATH}{builder_dir}/{number}/{name}"

    @defer.inlineCallbacks
    def sweep(self) -> Any:
        try:
            removed = yield threads.deferToThread(
                sweep, self.root, max_builds=self.max_builds, max_age_days=self.max_age_days)
        except Exception as exc:  # a sweep problem must not stop the loop
            log.err(exc, "ktstr_artifacts: retention sweep failed")
            return
        if removed:
            log.msg(f"ktstr_artifacts: retention removed {len(removed)} director(ies)")

    def find_entry(self, cache_key: str) -> Any:
        """A Deferred firing with :func:`find_published`'s answer; the scan runs in a thread
        so a remote lookup never blocks the reactor."""
        return threads.deferToThread(find_published, self.root, cache_key)

    @defer.inlineCallbacks
    def published(self, builder_dir: str) -> Any:
        """After a publish: apply the per-builder retention at once, not at the next sweep."""
        removed = yield threads.deferToThread(
            prune_builder, self.root / builder_dir, max_builds=self.max_builds,
            max_age_days=self.max_age_days)
        return removed


# -- the web side ---------------------------------------------------------------------


def _chunks(path: Path) -> Iterator[bytes]:
    # 1 MiB blocks: every block is one trip through the reactor for Twisted's WSGI.
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            yield block


def _safe_build_dir(root: Path, builder: str, number: int) -> Path | None:
    if not _BUILDER_RE.match(builder) or ".." in builder:
        return None
    path = (root / builder / str(number)).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_dir():
        return None
    return path


def _manifest(build_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((build_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def make_app(root: Path, *, users_file: Path | None = None) -> Flask:
    """The Flask app serving ``root``. ``users_file``: require Basic auth with those users."""
    app = Flask("ktstr_artifacts")

    @app.before_request
    def _auth() -> Response | None:
        if users_file is None:
            return None
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                user, pw = "", ""
            want = read_users(users_file).get(user)
            if want is not None and hmac.compare_digest(want.encode(), pw.encode()):
                return None
        return Response("login required\n", 401,
                        {"WWW-Authenticate": 'Basic realm="ktstr-ci downloads"'})

    @app.route("/index.html")
    def index() -> str:
        rows = []
        builders = sorted(p for p in root.iterdir() if p.is_dir() and _BUILDER_RE.match(p.name)) \
            if root.is_dir() else []
        for b in builders:
            for number, path in reversed(build_dirs(b)[-10:]):
                m = _manifest(path)
                link = f"{b.name}/{number}/"
                rows.append(
                    f"<tr><td>{html.escape(b.name)}</td><td><a href='{link}'>#{number}</a></td>"
                    f"<td>{html.escape(str(m.get('branch') or ''))}</td>"
                    f"<td>{html.escape(str(m.get('outcome') or ''))}</td>"
                    f"<td>{html.escape(str(m.get('published_at') or ''))}</td></tr>")
        body = "".join(rows) or "<tr><td colspan='5'>nothing published yet</td></tr>"
        return ("<div class='ktstr-artifacts'><h3>Kernel downloads</h3><table class='table'>"
                "<tr><th>builder</th><th>build</th><th>branch</th><th>outcome</th>"
                f"<th>published</th></tr>{body}</table></div>")

    @app.route("/<builder>/<int:number>/")
    def build_index(builder: str, number: int) -> str:
        path = _safe_build_dir(root, builder, number)
        if path is None:
            abort(404)
        m = _manifest(path)
        rows = "".join(
            f"<tr><td><a href='{html.escape(name)}'>{html.escape(name)}</a></td>"
            f"<td>{info.get('size')}</td><td><code>{html.escape(str(info.get('sha256')))}</code>"
            "</td></tr>"
            for name, info in sorted((m.get("files") or {}).items()))
        facts = "".join(
            f"<li>{k}: {html.escape(str(m.get(k)))}</li>"
            for k in ("branch", "revision", "outcome", "cache_key", "diff_hash", "vmlinux_from")
            if m.get(k) is not None)
        return (f"<!doctype html><title>{html.escape(builder)} #{number}</title>"
                f"<h3>{html.escape(builder)} #{number}</h3><ul>{facts}</ul>"
                f"<table><tr><th>file</th><th>bytes</th><th>sha256</th></tr>{rows}</table>")

    @app.route("/<builder>/<int:number>/<name>")
    def download(builder: str, number: int, name: str) -> Response:
        if name not in PUBLISHED_NAMES:
            abort(404)
        bdir = _safe_build_dir(root, builder, number)
        if bdir is None:
            abort(404)
        path = (bdir / name).resolve()
        if path.parent != bdir or not path.is_file():
            abort(404)
        size = path.stat().st_size
        text = name in _TEXT_FILES
        headers = {
            "Content-Length": str(size),
            "Content-Disposition": f"{'inline' if text else 'attachment'}; filename=\"{name}\"",
            "Cache-Control": "public, max-age=3600",
        }
        sha = ((_manifest(bdir).get("files") or {}).get(name) or {}).get("sha256")
        if sha:
            headers["ETag"] = f'"{sha}"'
        mimetype = "text/plain; charset=utf-8" if text else "application/octet-stream"
        if name.endswith(".json"):
            mimetype = "application/json"
        # HEAD: werkzeug drops the body (the generator never opens the file) and keeps
        # the headers, Content-Length included.
        return Response(_chunks(path), 200, headers, mimetype=mimetype, direct_passthrough=True)

    return app


def config_part(settings: Settings) -> ConfigPart:
    """The artifacts service and its web app (``settings.artifacts``)."""
    cfg = settings.artifacts
    users_file = None if settings.web.anonymous_read else settings.web.users_file
    return ConfigPart(
        feature="downloads",
        services=[
            ArtifactsService(
                root=str(cfg.root),
                base_url=settings.web_url,
                max_age_days=cfg.max_age_days,
                max_builds=cfg.max_builds,
                sweep_minutes=cfg.sweep_minutes,
                max_file_bytes=cfg.max_file_mb * (1 << 20) or None,
            )
        ],
        dashboards=[{"name": DASHBOARD_NAME, "caption": "Kernel downloads", "order": 20,
                     "icon": "FaDownload", "app": make_app(cfg.root, users_file=users_file)}],
    )


__all__ = ["ArtifactsService", "config_part", "find_published", "make_app", "prune_builder",
           "sweep"]
