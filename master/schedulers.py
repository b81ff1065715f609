"""Schedulers as data: a push scheduler per repository and the "force" form.

Push builds: one ``AnyBranchScheduler`` per repository with no tree-stable
timer, so every change (one per pushed branch tip, posted by the bare repo's
post-receive hook) becomes its own buildset at once, for every push profile's
builder. Branch names we cannot build, branches outside the repository's
patterns and deletions (an all-zero revision) are filtered here again, so a
hand-made POST to the change hook cannot start what the hooks refuse.

Supersede: :func:`collapse_push_requests` lets a newer push request replace a
queued (unclaimed) one of the same builder only when both came from a push
scheduler and Buildbot's default check agrees. Buildbot 4.3's default
(``BuildRequest.canBeCollapsed``) compares repository, branch, project and
codebase and the scheduler-set properties, so different branches never
collapse; but it ignores the force form's properties, so two queued forced
builds of one branch with different ``profile``/``clean``/``force`` would be
merged into one. Forced builds therefore never collapse here.
"""

from __future__ import annotations

from typing import Any

from buildbot.plugins import schedulers, util
from buildbot.process.buildrequest import BuildRequest
from buildbot.schedulers.forcesched import ChoiceStringParameter
from twisted.internet import defer

from master.settings import Repo, Settings, is_safe_branch

PUSH_PREFIX = "push-"
FORCE_NAME = "force"
ZERO_SHA = "0" * 40
# Shown in the force form's profile list: keep the builder's own profile.
BUILDER_PROFILE = "(builder's profile)"
BRANCH_REGEX = r"^(?!.*\.\.)(?![-/.])[A-Za-z0-9._/-]+$"


def builder_name(repo: Repo, profile: str) -> str:
    return f"{repo.name}-{profile}"


def push_scheduler_name(repo: Repo) -> str:
    return f"{PUSH_PREFIX}{repo.name}"


def push_filter(repo: Repo) -> util.ChangeFilter:
    """Changes of this repository that should build: wanted branch, not a deletion."""

    def wanted(change: Any) -> bool:
        if change.revision and set(change.revision) == {"0"}:
            return False  # a deleted branch starts nothing
        branch = change.branch or ""
        return change.repository == repo.url and repo.branch_wanted(branch)

    return util.ChangeFilter(filter_fn=wanted)


@defer.inlineCallbacks
def collapse_push_requests(master: Any, builder: Any, new_br: dict, old_br: dict):
    """Collapse function for every builder (see the module docstring)."""
    for br in (new_br, old_br):
        props = yield master.data.get(("buildsets", str(br["buildsetid"]), "properties"))
        sched = (props or {}).get("scheduler", (None, None))[0]
        if not (isinstance(sched, str) and sched.startswith(PUSH_PREFIX)):
            return False
    result = yield BuildRequest.canBeCollapsed(master, new_br, old_br)
    return result


class ProfileParameter(ChoiceStringParameter):
    """Profile choice whose first entry means "the builder's own profile".

    Choosing it sets no ``profile`` property, so the builder's default property
    applies (the same trick as Buildbot's ``WorkerChoiceParameter``).
    """

    def updateFromKwargs(self, kwargs: dict, **unused: Any) -> None:
        if self.getFromKwargs(kwargs) == BUILDER_PROFILE:
            return
        super().updateFromKwargs(kwargs=kwargs, **unused)


def force_scheduler(settings: Settings, builder_names: list[str]) -> schedulers.ForceScheduler:
    repos = [r.url for r in settings.repos]
    return schedulers.ForceScheduler(
        name=FORCE_NAME,
        label="Build a branch",
        buttonName="Build",
        builderNames=builder_names,
        reason=util.StringParameter(name="reason", label="Reason", default="forced", size=40),
        codebases=[
            util.CodebaseParameter(
                "",
                label="Source",
                branch=util.StringParameter(
                    name="branch",
                    label="Branch",
                    required=True,
                    regex=BRANCH_REGEX,
                ),
                revision=util.StringParameter(
                    name="revision", label="Revision (empty = branch head)", default="",
                    regex=r"^[0-9a-fA-F]{0,40}$",
                ),
                repository=util.ChoiceStringParameter(
                    name="repository", label="Repository", choices=repos, default=repos[0]
                ),
                project=util.FixedParameter(name="project", default=""),
            )
        ],
        properties=[
            ProfileParameter(
                name="profile",
                label="Config profile",
                choices=[BUILDER_PROFILE, *sorted(settings.profiles)],
                default=BUILDER_PROFILE,
            ),
            util.BooleanParameter(
                name="clean", label="Clean tree (make mrproper first)", default=False
            ),
            util.BooleanParameter(
                name="force", label="Force rebuild (ignore a cache hit)", default=False
            ),
        ],
    )


def build_schedulers(settings: Settings) -> list[Any]:
    """All schedulers for these settings."""
    out: list[Any] = []
    all_builders: list[str] = []
    for repo in settings.repos:
        all_builders += [builder_name(repo, p) for p in sorted(settings.profiles)]
        out.append(
            schedulers.AnyBranchScheduler(
                name=push_scheduler_name(repo),
                change_filter=push_filter(repo),
                treeStableTimer=None,
                builderNames=[builder_name(repo, p) for p in repo.profiles],
            )
        )
    out.append(force_scheduler(settings, all_builders))
    return out


__all__ = [
    "BUILDER_PROFILE",
    "FORCE_NAME",
    "build_schedulers",
    "builder_name",
    "collapse_push_requests",
    "is_safe_branch",
    "push_filter",
    "push_scheduler_name",
]
