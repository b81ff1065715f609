"""Push builds of a set of repositories: a builder per (repository, profile), a push scheduler each.

``[[repos]]`` entries (the core part, :mod:`master.builders`) and upstream
trees polled with git (:mod:`master.pollers`) are built alike: builders
``<repo>-<profile>`` for every profile of ``kconfig/profiles.toml`` over all
workers, whose factory checks out the repository's per-branch tree, with the
default properties ``profile`` (a forced build may override it) and ``repo``
and the push-only collapse function; and the push scheduler ``push-<repo>``
for the repository's push profiles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from buildbot.plugins import util
from buildbot.process.factory import BuildFactory

from ktstr_steps.buildsteps.factory import Checkout
from master.schedulers import builder_name, collapse_push_requests, push_scheduler
from settings import Repo, Settings
from settings.worker_specs import WorkerSpec


def pushed_repos(settings: Settings) -> tuple[Repo, ...]:
    """Every repository built like pushes: ``[[repos]]``, then the pollers' trees."""
    return settings.repos + tuple(p.as_repo() for p in settings.external.pollers)


def push_builders(settings: Settings, repos: tuple[Repo, ...], specs: list[WorkerSpec],
                  factory: Callable[..., BuildFactory]) -> list[util.BuilderConfig]:
    """A builder per (repository, profile) over all workers (module docstring)."""
    names = [s.name for s in specs]
    out = []
    for repo in repos:
        for name, profile in sorted(settings.profiles.items()):
            out.append(
                util.BuilderConfig(
                    name=builder_name(repo, name),
                    description=profile.description or None,
                    tags=[repo.name, name, *(["push"] if name in repo.profiles else [])],
                    workernames=names,
                    factory=factory(checkout=Checkout.BRANCH_TREE, repourl=repo.url,
                                    profile=name),
                    defaultProperties={"profile": name, "repo": repo.name},
                    collapseRequests=collapse_push_requests,
                )
            )
    return out


def push_schedulers(repos: tuple[Repo, ...]) -> list[Any]:
    """The push scheduler of each repository."""
    return [push_scheduler(repo) for repo in repos]


__all__ = ["push_builders", "push_schedulers", "pushed_repos"]
