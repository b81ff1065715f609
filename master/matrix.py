"""The nightly kernel matrix: versions x profiles, one build per cell, one parent run.

Settings: ``settings.matrix`` (the ``[matrix]`` table of settings/default.toml:
``enabled``, ``versions``, ``recent_days``, ``profiles``, ``time``,
``releases_url``, ``mirror``, ``rc_mirror``, ``download_cache`` and
``cpu_cap``), validated when the settings are loaded.

The embedded default is on and downloads nothing: every night it builds the
tips of the branches pushed in the last ``recent_days`` (``recent-branches``)
under the push profiles plus ``default``, so each branch is also checked
against the configs nobody builds on push. kernel.org versions are opt-in.

What its part of the config (:func:`config_part`) holds when ``enabled``:

* worker ``__matrix``: an in-process LocalWorker for the parent builds. Their
  steps run on the master only; a parent waiting for its cells on an LLC-group
  worker (``max_builds=1``) would hold that group, and with one group deadlock;
* builder ``matrix`` (on ``__matrix``): one build per run — resolve versions
  (at run start), the ``matrix_runs`` row, the fan-out, the totals;
* builder ``matrix-cell`` over every LLC-group worker: one build per version
  cell, a kernel build of a release tree (``kernel_build_factory`` with
  ``checkout=Checkout.RELEASE_TREE``: ``phase lookup --version``, then the
  kernel build's phases on a miss);
  ``collapseRequests=False``: Buildbot's default collapse ignores properties
  set by a trigger and would merge cells;
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

from typing import Any

from buildbot.plugins import schedulers, util, worker
from buildbot.process.properties import Property

from ktstr_steps.buildsteps.factory import Checkout, ReleaseSource, kernel_build_factory
from ktstr_steps.buildsteps.matrix_run import matrix_run_factory
from ktstr_steps.matrixspec import RECENT, parse_spec
from master.dashboard import ROUTES
from master.parts import ConfigPart
from master.pushes import pushed_repos
from master.schedulers import KtstrForceScheduler, ReasonParameter, builder_name
from settings import MatrixSettings, Repo, Settings
from settings.worker_specs import WorkerSpec

MATRIX_WORKER = "__matrix"
MATRIX_BUILDER = "matrix"
CELL_BUILDER = "matrix-cell"
NIGHTLY_NAME = "nightly-matrix"
FORCE_NAME = "force-matrix"
CELL_SCHEDULER = "matrix-cells"
BRANCH_SCHEDULER = "matrix-{repo}-{profile}"


def branch_repos(m: MatrixSettings, repos: tuple[Repo, ...]) -> list[str]:
    """Repositories whose branches the matrix builds, in settings order.

    ``recent-branches`` builds branches of every pushed repository; a
    ``branch:`` entry those of its repository.
    """
    out: list[str] = []
    for text in m.versions:
        spec = parse_spec(text)
        named = [r.name for r in repos] if spec.kind == RECENT else [spec.repo or ""]
        if spec.kind in ("branch", RECENT):
            out += [name for name in named if name not in out]
    return out


def dashboard_url(settings: Settings) -> str:
    """The matrix grid page inside the web UI (``?id=<run>`` is appended per run)."""
    return f"{settings.web_url}#/{ROUTES['matrix']}"


def force_matrix() -> KtstrForceScheduler:
    """The "Run the kernel matrix now" button: no fields but the reason."""
    return KtstrForceScheduler(
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
    )


def config_part(settings: Settings, specs: list[WorkerSpec]) -> ConfigPart:
    """The matrix builders, schedulers and worker (see the module docstring); none when off."""
    m = settings.matrix
    if not m.enabled:
        return ConfigPart(feature="matrix")
    pushed = pushed_repos(settings)
    repos = {r.name: r.url for r in pushed}
    builders = [
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
                branch_patterns={r.name: list(r.branches) for r in pushed},
                recent_days=m.recent_days,
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
            workernames=[s.name for s in specs],
            factory=kernel_build_factory(
                checkout=Checkout.RELEASE_TREE,
                profile=Property("profile"),
                releases=ReleaseSource(download_cache=str(m.download_cache), mirror=m.mirror,
                                       rc_mirror=m.rc_mirror, max_files=m.download_max_files,
                                       max_gb=m.download_max_gb),
                cpu_cap=m.cpu_cap,
            ),
            # Never collapse: every cell is a different (version, profile).
            collapseRequests=False,
        ),
    ]
    scheds: list[Any] = [
        schedulers.Nightly(
            name=NIGHTLY_NAME,
            builderNames=[MATRIX_BUILDER],
            hour=m.hour,
            minute=m.minute,
            onlyIfChanged=False,
        ),
        force_matrix(),
        schedulers.Triggerable(name=CELL_SCHEDULER, builderNames=[CELL_BUILDER]),
    ]
    for repo in branch_repos(m, pushed):
        r = next(x for x in pushed if x.name == repo)
        scheds += [
            schedulers.Triggerable(
                name=BRANCH_SCHEDULER.format(repo=repo, profile=profile),
                builderNames=[builder_name(r, profile)],
            )
            for profile in m.profiles
        ]
    return ConfigPart(
        feature="matrix",
        where=f"settings file {settings.source}: matrix",
        workers=[worker.LocalWorker(MATRIX_WORKER)],
        builders=builders,
        schedulers=scheds,
    )


__all__ = [
    "CELL_BUILDER",
    "FORCE_NAME",
    "MATRIX_BUILDER",
    "MATRIX_WORKER",
    "NIGHTLY_NAME",
    "config_part",
]
