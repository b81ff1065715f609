"""BuildmasterConfig as data: every feature's config part, merged.

``build_config(settings)`` is all ``master.cfg`` calls. It collects the part
of each feature (:class:`master.parts.ConfigPart`) and merges them
(:func:`master.parts.merge`, which refuses two parts claiming one name):

* core (:func:`core_part`): the top-level settings, one ``Worker`` per
  :class:`settings.worker_specs.WorkerSpec` (one per LLC group of this host by
  default), ``max_builds=1`` so a worker *is* its LLC group's reservation, with
  properties ``host``, ``llc_index``, ``llc_cpus``, ``llc_ncpus``,
  ``llc_node``, ``tree_store`` and ``kernel_cache``; the push builders and
  schedulers of ``[[repos]]`` (:mod:`master.pushes`); the force form
  (:mod:`master.schedulers`); a janitor for old logs. No change sources: the
  bare repository's post-receive hook posts changes to ``/change_hook/base``;
* the web UI (:mod:`master.www`), the records service and dashboard
  (:mod:`master.records.part`), the push spool (:mod:`master.push_spool`),
  the matrix (:mod:`master.matrix`), try builds (:mod:`master.tryjobs`),
  webhooks (:mod:`master.webhooks`), pollers (:mod:`master.pollers`),
  downloads (:mod:`master.artifacts`), notifications (:mod:`master.notify`) and
  the held connection to a SQLite database (:mod:`master.sqlite_keeper`).

Every kernel builder's factory comes from one function,
:func:`ktstr_steps.buildsteps.factory.kernel_build_factory`, given the parts
of its kind of build (checkout, lookup, repository, profile, ...).
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

from ktstr_steps.buildsteps.factory import kernel_build_factory
from master import (
    artifacts,
    matrix,
    notify,
    pollers,
    push_spool,
    sqlite_keeper,
    tryjobs,
    webhooks,
    www,
)
from master.parts import ConfigPart, merge
from master.pushes import push_builders, push_schedulers, pushed_repos
from master.records import part as records_part
from master.schedulers import force_scheduler
from settings import REPO_ROOT, Settings, SettingsError, load, read_secret
from settings.worker_specs import WorkerSpec, worker_specs

log = logging.getLogger(__name__)

# kernel_build_factory or a stand-in with its keywords (tests pass one).
FactoryFn = Callable[..., BuildFactory]


def default_factory() -> FactoryFn:
    """The factory function of the builds of git trees: the one kernel build factory."""
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


def core_part(settings: Settings, specs: list[WorkerSpec], factory: FactoryFn) -> ConfigPart:
    """The master itself, its workers, the ``[[repos]]`` builders and schedulers, the force form."""
    return ConfigPart(
        feature="core",
        top={
            "title": settings.master.title,
            "titleURL": settings.web_url,
            "buildbotURL": settings.web_url,
            # Buildbot otherwise reports usage data to buildbot.net (maybe over plain http).
            "buildbotNetUsageData": None,
            "db": {"db_url": settings.databases.buildbot},
            "protocols": {"pb": {"port": f"tcp:{settings.master.pb_port}:"
                                         f"interface={settings.master.pb_bind}"}},
        },
        workers=build_workers(settings, specs),
        builders=push_builders(settings, settings.repos, specs, factory),
        schedulers=[*push_schedulers(settings.repos),
                    # The form builds every repository that builds like pushes, pollers too.
                    force_scheduler(settings, pushed_repos(settings))],
        configurators=[
            util.JanitorConfigurator(
                logHorizon=timedelta(days=settings.janitor.log_days),
                build_data_horizon=timedelta(days=settings.janitor.build_data_days),
                hour=settings.janitor.hour,
            )
        ],
    )


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
    """The whole ``BuildmasterConfig`` dict for ``settings``: every feature's part, merged.

    ``factory`` builds the builders of git trees (pushes, try builds, pollers)
    and defaults to ``kernel_build_factory``; tests pass a stand-in that takes
    the same keywords. Release cells of the matrix always use
    ``kernel_build_factory``: their lookup is the one that fetches the tree.
    ``specs`` defaults to :func:`settings.worker_specs.worker_specs`.
    """
    if factory is None:
        factory = default_factory()
    if specs is None:
        specs = worker_specs(settings)
    if not specs:
        raise ValueError("no workers: the topology has no LLC groups and workers.list is empty")
    return merge([
        core_part(settings, specs, factory),
        www.config_part(settings),
        records_part.config_part(settings),
        push_spool.config_part(settings),
        matrix.config_part(settings, specs),
        tryjobs.config_part(settings, specs, factory),
        webhooks.config_part(settings),
        pollers.config_part(settings, specs, factory),
        artifacts.config_part(settings),
        notify.config_part(settings),
        sqlite_keeper.config_part(settings.databases.buildbot),
    ])
