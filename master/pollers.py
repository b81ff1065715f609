"""Pollers: upstream trees polled with git, built like a ``[[repos]]`` entry.

Settings: ``settings.external.pollers`` (``[[external.pollers]]`` of
settings/default.toml)::

    [[external.pollers]]
    name = "sched-ext-next"       # builders <name>-<profile>, scheduler push-<name>
    url = "https://git.kernel.org/pub/scm/linux/kernel/git/tj/sched_ext.git"
    branches = ["for-next"]       # regular expressions, whole branch name
    interval = 300                # seconds between polls
    profiles = ["tiny"]           # profiles built for each new commit

Pollers are Buildbot ``GitPoller`` change sources with ``pollAtLaunch=True``
(Buildbot's first poll only records the branch heads, so polling at launch
makes the first *new* commit build). Each poller gets builders
``<name>-<profile>`` for every profile and a push scheduler for its
``profiles``, made like a ``[[repos]]`` entry's (:mod:`master.pushes`), and is
listed in the force form. A poller whose builder or scheduler name is taken
by a ``[[repos]]`` entry is a config error that names the poller's table.
Only ``refs/heads/*`` names that are safe and match ``branches`` are fetched
at all; others are logged once.
"""

from __future__ import annotations

from collections.abc import Callable

from buildbot.plugins import changes
from buildbot.process.factory import BuildFactory
from twisted.python import log

from ktstr_steps.refnames import branch_problem, shown
from master.parts import ConfigPart
from master.pushes import push_builders, push_schedulers
from settings import Poller, Settings
from settings.worker_specs import WorkerSpec


class BranchPicker:
    """GitPoller ``branches`` callable: safe ``refs/heads/*`` names matching the patterns."""

    def __init__(self, poller: Poller) -> None:
        self.poller = poller
        self.repo = poller.as_repo()
        self._told: set[str] = set()

    def __call__(self, ref: str) -> bool:
        if not ref.startswith("refs/heads/"):
            return False
        branch = ref[len("refs/heads/"):]
        problem = branch_problem(branch)
        if problem is not None:
            if branch not in self._told:  # once per name, not every poll
                self._told.add(branch)
                log.msg(f"ktstr-ci: poller {self.poller.name}: branch name {shown(branch)} of "
                        f"{self.poller.url} is not built: {problem}")
            return False
        return self.repo.branch_wanted(branch)

    # Buildbot compares change sources on reconfig; equal settings = same poller.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, BranchPicker) and other.poller == self.poller

    def __hash__(self) -> int:
        return hash(self.poller)


def git_poller(poller: Poller) -> changes.GitPoller:
    return changes.GitPoller(
        repourl=poller.url,
        name=poller.name,
        branches=BranchPicker(poller),
        pollInterval=poller.interval,
        # The first poll only records the heads; polling at launch makes the
        # first new upstream commit after a (re)start build.
        pollAtLaunch=True,
        workdir=f"gitpoller-{poller.name}",
        project=poller.name,
    )


def config_part(settings: Settings, specs: list[WorkerSpec],
                factory: Callable[..., BuildFactory]) -> ConfigPart:
    """Each poller's change source, builders and push scheduler.

    ``factory`` is the one that makes the ``[[repos]]`` builders (a stand-in in
    tests), called with the poller's URL; the force form (the core part) lists
    the pollers' builders and URLs itself (:func:`master.pushes.pushed_repos`).
    """
    repos = tuple(p.as_repo() for p in settings.external.pollers)
    return ConfigPart(
        feature="pollers",
        where=f"settings file {settings.source}: external.pollers",
        fix="rename the poller",
        builders=push_builders(settings, repos, specs, factory),
        schedulers=push_schedulers(repos),
        change_sources=[git_poller(p) for p in settings.external.pollers],
    )
