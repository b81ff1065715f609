"""The nightly kernel matrix: versions x profiles, one build per cell, one parent run.

Settings (``[matrix]``, see master/settings.default.toml): ``enabled``,
``versions``, ``profiles``, ``time``, ``releases_url``, ``mirror``,
``rc_mirror``, ``download_cache`` and ``cpu_cap``. Everything is validated here
and every error names its key (``matrix.versions[1]``).

What :func:`configure` adds when ``enabled``:

* worker ``__matrix``: an in-process LocalWorker for the parent builds. Their
  steps run on the master only; a parent waiting for its cells on an LLC-group
  worker (``max_builds=1``) would hold that group, and with one group deadlock;
* builder ``matrix`` (on ``__matrix``): one build per run — resolve versions
  (at run start), the ``matrix_runs`` row, the fan-out, the totals;
* builder ``matrix-cell`` over every LLC-group worker: one build per version
  cell (``phase lookup --version``, then the kernel build's phases);
  ``collapseRequests=False``: Buildbot's default collapse ignores properties
  set by a trigger and would merge cells (buildbot.md §8);
* schedulers ``nightly-matrix`` (``Nightly`` at ``time``, master's local time),
  ``force-matrix`` (the "Run the kernel matrix now" button), ``matrix-cells``
  (Triggerable → ``matrix-cell``) and, for each ``branch:<repo>/<branch>``
  entry, ``matrix-<repo>-<profile>`` (Triggerable → the push builder
  ``<repo>-<profile>``, so a branch cell builds the branch tip exactly like a
  push does, in the same per-branch tree).

``enabled = false`` (the default) adds nothing: no nightly downloads from
kernel.org on a machine that did not ask for them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from master.settings import NAME_RE, Settings, SettingsError, _abspath, _Reader

MATRIX_WORKER = "__matrix"
MATRIX_BUILDER = "matrix"
CELL_BUILDER = "matrix-cell"
NIGHTLY_NAME = "nightly-matrix"
FORCE_NAME = "force-matrix"
CELL_SCHEDULER = "matrix-cells"
BRANCH_SCHEDULER = "matrix-{repo}-{profile}"

_TIME_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class MatrixSettings:
    enabled: bool
    versions: tuple[str, ...]
    profiles: tuple[str, ...]
    hour: int
    minute: int
    releases_url: str | None
    mirror: str | None
    rc_mirror: str | None
    download_cache: Path
    cpu_cap: int | None  # None: the worker's whole LLC group (llc_ncpus)


def load_matrix(settings: Settings) -> MatrixSettings:
    """The validated ``[matrix]`` table; :class:`SettingsError` names the key at fault."""
    from ktstr_steps.matrixspec import parse_spec

    table = settings.extensions.get("matrix") or {}
    r = _Reader(settings.source, table, "matrix.")
    known = {"enabled", "versions", "profiles", "time", "releases_url", "mirror", "rc_mirror",
             "download_cache", "cpu_cap"}  # fmt: skip
    unknown = sorted(set(table) - known)
    if unknown:
        raise r.err(unknown[0], f"is not a known key ({', '.join(sorted(known))})")
    versions = r.strlist("versions")
    if not versions:
        raise r.err("versions", "must list at least one version spec")
    repos = {repo.name for repo in settings.repos}
    for i, text in enumerate(versions):
        try:
            spec = parse_spec(text)
        except ValueError as exc:
            raise r.err(f"versions[{i}]", str(exc)) from None
        if spec.kind == "branch" and spec.repo not in repos:
            raise r.err(
                f"versions[{i}]",
                f"names the unknown repository {spec.repo!r} in {text!r}; known "
                f"repositories ([[repos]] names): {', '.join(sorted(repos))}",
            )
    if len(set(versions)) != len(versions):
        dup = next(v for v in versions if versions.count(v) > 1)
        raise r.err("versions", f"lists {dup!r} twice")
    profiles = r.strlist("profiles")
    if not profiles:
        raise r.err("profiles", "must list at least one profile from kconfig/profiles.toml")
    for i, name in enumerate(profiles):
        if not NAME_RE.match(name) or name not in settings.profiles:
            raise r.err(
                f"profiles[{i}]",
                f"names the unknown profile {name!r}; known profiles (kconfig/profiles.toml): "
                f"{', '.join(sorted(settings.profiles))}",
            )
    if len(set(profiles)) != len(profiles):
        raise r.err("profiles", "lists a profile twice")
    when = r.str("time")
    m = _TIME_RE.match(when)
    if not m:
        raise r.err("time", f'must be a time of day "HH:MM" (24-hour, e.g. "03:00"), not {when!r}')
    urls = {}
    for key in ("releases_url", "mirror", "rc_mirror"):
        value = r.str(key).strip()
        if value and not re.match(r"^https?://[^\s/]+", value):
            raise r.err(key, f'must be "" (the environment / kernel.org default) or an '
                             f"http(s):// URL, not {value!r}")
        urls[key] = value.rstrip("/") or None
    cache = r.str("download_cache")
    if not cache:
        raise r.err("download_cache", "must name a directory (e.g. \"var/downloads\")")
    cap = r.int("cpu_cap", 0, 4096)
    return MatrixSettings(
        enabled=r.bool("enabled"),
        versions=tuple(versions),
        profiles=tuple(profiles),
        hour=int(m.group(1)),
        minute=int(m.group(2)),
        releases_url=urls["releases_url"],
        mirror=urls["mirror"],
        rc_mirror=urls["rc_mirror"],
        download_cache=_abspath(settings.root, cache),
        cpu_cap=cap or None,
    )


def branch_repos(m: MatrixSettings) -> list[str]:
    """Repositories named by ``branch:`` entries, in settings order."""
    from ktstr_steps.matrixspec import parse_spec

    out: list[str] = []
    for text in m.versions:
        spec = parse_spec(text)
        if spec.kind == "branch" and spec.repo not in out:
            out.append(spec.repo or "")
    return out


def dashboard_url(settings: Settings) -> str | None:
    """The dashboard's matrix grid page (``?id=<run>`` is appended per run), if installed."""
    try:
        from master.dashboard import DEFAULT_NAME
    except ImportError:
        return None
    return f"{settings.web_url}plugins/wsgi_dashboards/{DEFAULT_NAME}/matrix.html"


def configure(c: dict[str, Any], settings: Settings, specs: list[Any]) -> None:
    """Add the matrix builders, schedulers and worker to ``c`` (see the module docstring)."""
    from buildbot.config.errors import ConfigErrors
    from buildbot.plugins import schedulers, util, worker

    from ktstr_steps.buildsteps.matrix import matrix_cell_factory, matrix_run_factory
    from master.schedulers import KtstrForceScheduler, ReasonParameter, builder_name

    try:
        m = load_matrix(settings)
    except SettingsError as exc:
        # One clear line in checkconfig/twistd.log instead of a traceback.
        raise ConfigErrors([str(exc)]) from None
    if not m.enabled:
        return
    llc_workers = [s.name for s in specs]
    c["workers"].append(worker.LocalWorker(MATRIX_WORKER))
    repos = {r.name: r.url for r in settings.repos}
    c["builders"] += [
        util.BuilderConfig(
            name=MATRIX_BUILDER,
            description="Nightly kernel matrix: resolves versions, fans out one build per cell",
            tags=["matrix"],
            workernames=[MATRIX_WORKER],
            factory=matrix_run_factory(
                specs=list(m.versions),
                profiles=list(m.profiles),
                repos=repos,
                cell_scheduler=CELL_SCHEDULER,
                branch_scheduler=BRANCH_SCHEDULER,
                releases_url=m.releases_url,
                mirror=m.mirror,
                dashboard_url=dashboard_url(settings),
            ),
            collapseRequests=False,
        ),
        util.BuilderConfig(
            name=CELL_BUILDER,
            description="One matrix cell: a released kernel version x a config profile",
            tags=["matrix"],
            workernames=llc_workers,
            factory=matrix_cell_factory(
                download_cache=str(m.download_cache),
                mirror=m.mirror,
                rc_mirror=m.rc_mirror,
                cpu_cap=m.cpu_cap,
            ),
            # Never collapse: every cell is a different (version, profile).
            collapseRequests=False,
        ),
    ]
    c["schedulers"] += [
        schedulers.Nightly(
            name=NIGHTLY_NAME,
            builderNames=[MATRIX_BUILDER],
            hour=m.hour,
            minute=m.minute,
            onlyIfChanged=False,
        ),
        KtstrForceScheduler(
            name=FORCE_NAME,
            label="Run the kernel matrix now",
            buttonName="Run matrix",
            builderNames=[MATRIX_BUILDER],
            reason=ReasonParameter(name="reason", label="Reason", default="forced", size=40),
            codebases=[
                util.CodebaseParameter(
                    "",
                    branch=util.FixedParameter(name="branch", default=""),
                    revision=util.FixedParameter(name="revision", default=""),
                    repository=util.FixedParameter(name="repository", default=""),
                    project=util.FixedParameter(name="project", default=""),
                )
            ],
        ),
        schedulers.Triggerable(name=CELL_SCHEDULER, builderNames=[CELL_BUILDER]),
    ]
    for repo in branch_repos(m):
        r = next(x for x in settings.repos if x.name == repo)
        for profile in m.profiles:
            c["schedulers"].append(
                schedulers.Triggerable(
                    name=BRANCH_SCHEDULER.format(repo=repo, profile=profile),
                    builderNames=[builder_name(r, profile)],
                )
            )


__all__ = [
    "CELL_BUILDER",
    "FORCE_NAME",
    "MATRIX_BUILDER",
    "MATRIX_WORKER",
    "NIGHTLY_NAME",
    "MatrixSettings",
    "configure",
    "load_matrix",
]
