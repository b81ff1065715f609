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
``profiles``, exactly like a ``[[repos]]`` entry, and is added to the force
form. Only ``refs/heads/*`` names that are safe and match ``branches`` are
fetched at all; others are logged once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from buildbot.config.errors import ConfigErrors
from buildbot.plugins import changes
from buildbot.process.factory import BuildFactory
from twisted.python import log

from ktstr_steps.refnames import branch_problem, shown
from settings import Poller, Settings


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


def clone_factory(template: BuildFactory, old_url: str, new_url: str) -> BuildFactory:
    """``template`` with every step argument equal to ``old_url`` replaced by ``new_url``.

    ``configure`` is not given the factory function ``build_config`` used, so a
    poller's builders reuse a repo builder's steps of the same profile.
    """
    def swap(v: Any) -> Any:
        return new_url if v == old_url else v

    out = copy.copy(template)
    out.steps = []
    for sf in template.steps:
        new = copy.copy(sf)
        new.args = tuple(swap(a) for a in sf.args)
        new.kwargs = {k: swap(v) for k, v in sf.kwargs.items()}
        out.steps.append(new)
    return out


def configure(c: dict[str, Any], settings: Settings, specs: list[Any], *,
              factory: Callable[..., BuildFactory] | None = None) -> None:
    """Add each poller's change source, builders and push scheduler to ``c``, and its
    builders to the force form; ``factory`` is the push builders' (see :func:`clone_factory`)."""
    pollers = settings.external.pollers
    if not pollers:
        return
    from master.builders import build_builders
    from master.schedulers import FORCE_NAME, build_schedulers, builder_name, force_scheduler

    repos = tuple(p.as_repo() for p in pollers)
    if factory is None:
        template_repo = settings.repos[0]
        by_name = {b.name: b for b in c["builders"]}

        def factory(*, repourl: str, profile: str, **_: Any) -> BuildFactory:
            template = by_name[builder_name(template_repo, profile)].factory
            return clone_factory(template, template_repo.url, repourl)

    sub = replace(settings, repos=repos)
    new_builders = build_builders(sub, specs, factory)
    taken = {b.name for b in c["builders"]}
    for b in new_builders:
        if b.name in taken:
            raise ConfigErrors([f"settings file {settings.source}: external.pollers: builder "
                                f"{b.name} already exists; rename the poller"])
    c["builders"] += new_builders
    c.setdefault("change_source", []).extend(git_poller(p) for p in pollers)
    # Push schedulers (push-<name>, same filter and collapsing as pushes here).
    c["schedulers"] += [s for s in build_schedulers(sub) if s.name != FORCE_NAME]
    # The force form lists the pollers' builders and URLs too.
    for i, s in enumerate(c["schedulers"]):
        if s.name == FORCE_NAME:
            names = list(s.builderNames) + [b.name for b in new_builders]
            c["schedulers"][i] = force_scheduler(
                replace(settings, repos=settings.repos + repos), names
            )
