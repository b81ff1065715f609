"""BuildmasterConfig as data: settings → workers, builders, schedulers, web, services.

``build_config(settings)`` is all ``master.cfg`` calls. Shape:

* workers: one ``Worker`` per :class:`settings.worker_specs.WorkerSpec` (one per LLC
  group of this host by default), ``max_builds=1`` so a worker *is* its LLC
  group's reservation, with properties ``host``, ``llc_index``, ``llc_cpus``,
  ``llc_ncpus``, ``llc_node``, ``tree_store`` and ``kernel_cache``;
* builders: one per (repository, config profile of ``kconfig/profiles.toml``),
  named ``<repo>-<profile>``, over all workers, with the default property
  ``profile`` (a forced build may override it) and the push-only collapse
  function of :mod:`master.schedulers`;
* schedulers: see :mod:`master.schedulers`; no change sources: the bare
  repository's post-receive hook posts changes to ``/change_hook/base``, and
  :mod:`master.push_spool` adds those it spooled while the master was away;
* the records service and dashboard, when installed; a janitor for old logs.
"""

from __future__ import annotations

import logging
import secrets as _secrets
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from buildbot.config.errors import ConfigErrors
from buildbot.plugins import util, worker
from buildbot.process.factory import BuildFactory

from master.schedulers import build_schedulers, builder_name, collapse_push_requests
from master.www import www_config
from settings import REPO_ROOT, Settings, SettingsError, load, read_secret
from settings.worker_specs import WorkerSpec, worker_specs

log = logging.getLogger(__name__)

FactoryFn = Callable[..., BuildFactory]


def default_factory() -> FactoryFn:
    """The kernel build factory of ``ktstr_steps.buildsteps`` (imported late: it pulls in steps)."""
    from ktstr_steps.buildsteps.factory import kernel_build_factory

    return kernel_build_factory


def worker_password(spec: WorkerSpec) -> str:
    password = read_secret(spec.password_file)
    if password is None:
        # checkconfig on a fresh clone: no worker can log in until the service
        # generates the password, which is what we want.
        log.warning("ktstr-ci: no password file %s for worker %s yet", spec.password_file, spec.name)
        return _secrets.token_urlsafe(32)
    return password


def build_workers(settings: Settings, specs: list[WorkerSpec]) -> list[worker.Worker]:
    return [
        worker.Worker(
            spec.name,
            worker_password(spec),
            max_builds=1,
            properties=spec.properties(settings),
            # Notice a lost worker within a minute rather than an hour.
            keepalive_interval=settings.workers.keepalive,
        )
        for spec in specs
    ]


def build_builders(
    settings: Settings, specs: list[WorkerSpec], factory: FactoryFn
) -> list[util.BuilderConfig]:
    names = [s.name for s in specs]
    out = []
    for repo in settings.repos:
        for name, profile in sorted(settings.profiles.items()):
            out.append(
                util.BuilderConfig(
                    name=builder_name(repo, name),
                    description=profile.description or None,
                    tags=[repo.name, name, *(["push"] if name in repo.profiles else [])],
                    workernames=names,
                    factory=factory(repourl=repo.url, profile=name),
                    defaultProperties={"profile": name, "repo": repo.name},
                    collapseRequests=collapse_push_requests,
                )
            )
    return out


def load_settings(path: Path | str | None = None, *, root: Path = REPO_ROOT) -> Settings:
    """``settings.load()`` for the master configuration.

    A settings mistake becomes Buildbot's ``ConfigErrors`` with the one line
    that names the file and the key, so checkconfig and the master log show
    that line instead of a traceback.
    """
    try:
        return load(path, root=root)
    except SettingsError as exc:
        raise ConfigErrors([str(exc)]) from None


def build_config(
    settings: Settings,
    *,
    factory: FactoryFn | None = None,
    specs: list[WorkerSpec] | None = None,
) -> dict[str, Any]:
    """The whole ``BuildmasterConfig`` dict for ``settings``.

    ``factory`` defaults to ``kernel_build_factory``; tests pass a stand-in.
    ``specs`` defaults to :func:`settings.worker_specs.worker_specs`.
    """
    if factory is None:
        factory = default_factory()
    if specs is None:
        specs = worker_specs(settings)
    if not specs:
        raise ValueError("no workers: the topology has no LLC groups and workers.list is empty")
    c: dict[str, Any] = {
        "title": settings.master.title,
        "titleURL": settings.web_url,
        "buildbotURL": settings.web_url,
        # Buildbot otherwise reports usage data to buildbot.net (maybe over plain http).
        "buildbotNetUsageData": None,
        "db": {"db_url": settings.databases.buildbot},
        "protocols": {"pb": {"port": f"tcp:{settings.master.pb_port}:interface={settings.master.pb_bind}"}},
        "workers": build_workers(settings, specs),
        "builders": build_builders(settings, specs, factory),
        "schedulers": build_schedulers(settings),
        "change_source": [],
        "www": www_config(settings),
        "services": [],
        "configurators": [
            util.JanitorConfigurator(
                logHorizon=timedelta(days=settings.janitor.log_days),
                build_data_horizon=timedelta(days=settings.janitor.build_data_days),
                hour=settings.janitor.hour,
            )
        ],
    }
    try:
        from master.records.service import RecordsService  # type: ignore[import-not-found]
    except ImportError:
        RecordsService = None
    if RecordsService is not None:
        c["services"].append(RecordsService(db_url=settings.databases.records))
    # Feature modules add their builders, schedulers, services and web pieces.
    from master import artifacts, matrix, pollers, push_spool, tryjobs, webhooks

    push_spool.configure(c, settings)
    matrix.configure(c, settings, specs)
    tryjobs.configure(c, settings, specs)
    webhooks.configure(c, settings)
    # Pollers build other repositories with the same factory as pushes.
    pollers.configure(c, settings, specs, factory=factory)
    artifacts.configure(c, settings, specs)
    return c
