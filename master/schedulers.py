"""Schedulers as data: a push scheduler per repository and the "force" form.

The core part (:mod:`master.builders`) and the pollers' part
(:mod:`master.pollers`) each make the push schedulers of their repositories;
the force form, made by the core part, lists every repository that builds
like pushes (:func:`master.pushes.pushed_repos`).

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

The force form refuses bad input with a 400 that says what is wrong (Buildbot
answers an unknown or empty builder with a 500 ``KeyError``): the builder must
be one of the form's builders, the branch passes the one branch rule of
:mod:`ktstr_steps.refnames`, a revision is a full commit id, ``clean`` and
``force`` are JSON booleans (Buildbot reads anything but ``true`` as false) and
the reason has at most :data:`REASON_MAX` characters.
"""

from __future__ import annotations

import json
from typing import Any

from buildbot.plugins import schedulers, util
from buildbot.process.buildrequest import BuildRequest
from buildbot.schedulers.forcesched import (
    ChoiceStringParameter,
    CollectedValidationError,
    ValidationError,
)
from twisted.internet import defer

from ktstr_steps.refnames import RULE, branch_problem, is_safe_branch, revision_problem, shown
from settings import Repo, Settings

PUSH_PREFIX = "push-"
FORCE_NAME = "force"
ZERO_SHA = "0" * 40
# Shown in the force form's profile list: keep the builder's own profile.
BUILDER_PROFILE = "(builder's profile)"
# Buildbot stores "A build was forced by '<owner>': <reason>" in a 256-character
# column; 200 leaves room for the rest.
REASON_MAX = 200
# Builder ids are SQL integers.
_ID_MAX = 2**63 - 1


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


def as_json(value: Any, limit: int = 80) -> str:
    """A form value as the JSON the client sent, cut at ``limit`` characters."""
    text = json.dumps(value, default=str)
    return text[:limit] + ("..." if len(text) > limit else "")


class BranchParameter(util.StringParameter):
    """A branch name that passes the one branch rule."""

    def parse_from_arg(self, s: Any) -> str:
        problem = branch_problem(s)
        if problem is not None:
            raise ValidationError(f"branch {shown(s)}: {problem}; {RULE}")
        return s


class RevisionParameter(util.StringParameter):
    """Empty (the branch head) or a full commit id."""

    def parse_from_arg(self, s: Any) -> str:
        if s == "":
            return s
        problem = revision_problem(s)
        if problem is not None:
            raise ValidationError(
                f"revision {shown(s)}: {problem}; leave it empty for the branch head, or give "
                "the full id (git rev-parse <commit>)"
            )
        return s


class ReasonParameter(util.StringParameter):
    """Free text of at most :data:`REASON_MAX` characters."""

    def parse_from_arg(self, s: Any) -> str:
        if not isinstance(s, str):
            raise ValidationError(f"reason must be text, not {type(s).__name__}")
        if len(s) > REASON_MAX:
            raise ValidationError(
                f"reason is {len(s)} characters long; the limit is {REASON_MAX}: shorten it"
            )
        return s


class StrictBooleanParameter(util.BooleanParameter):
    """``true`` or ``false`` only: Buildbot's own reads ``"yes"`` or ``1`` as false."""

    def getFromKwargs(self, kwargs: dict) -> bool:
        values = kwargs.get(self.fullName, [self.default])
        if len(values) != 1 or not isinstance(values[0], bool):
            given = values[0] if len(values) == 1 else values
            raise ValidationError(
                f"{self.name} must be true or false (a JSON boolean), not {as_json(given)}"
            )
        return values[0]


class KtstrForceScheduler(schedulers.ForceScheduler):
    """The force form, refusing an unknown, missing or empty builder with a 400.

    Without a builder Buildbot would force every builder of the form; with an
    unknown one it answers 500 (``KeyError``/``TypeError``).
    """

    @defer.inlineCallbacks
    def force(self, owner: Any, builderNames: Any = None, builderid: Any = None, **kwargs: Any):
        problem = yield self._builder_problem(builderNames, builderid)
        if problem is not None:
            raise CollectedValidationError({"builderNames": problem})
        result = yield super().force(owner, builderNames=builderNames, builderid=builderid,
                                     **kwargs)
        return result

    @defer.inlineCallbacks
    def _builder_problem(self, names: Any, builderid: Any):
        known = ", ".join(sorted(self.builderNames))
        if names is not None:
            if not isinstance(names, list) or not names or not all(
                isinstance(n, str) for n in names
            ):
                return (f"builderNames must be a non-empty list of builder names, not "
                        f"{as_json(names)}; the builders are: {known}")
            unknown = [n for n in names if n not in self.builderNames]
            if unknown:
                return f"unknown builder {shown(unknown[0])}; the builders are: {known}"
            return None
        if builderid is None:
            return f"name the builder (builderNames or builderid); the builders are: {known}"
        text = str(builderid)
        if isinstance(builderid, bool) or not text.isdigit() or not 0 < int(text) <= _ID_MAX:
            return f"builderid must be a builder's number, not {shown(text)}"
        builder = yield self.master.data.get(("builders", text))
        if not builder or builder.get("name") not in self.builderNames:
            return f"no builder with id {text} in this form; the builders are: {known}"
        return None


def force_scheduler(settings: Settings, repos: tuple[Repo, ...]) -> schedulers.ForceScheduler:
    """The "Build a branch" form over every builder and URL of ``repos``."""
    urls = [r.url for r in repos]
    return KtstrForceScheduler(
        name=FORCE_NAME,
        label="Build a branch",
        buttonName="Build",
        builderNames=[builder_name(r, p) for r in repos for p in sorted(settings.profiles)],
        reason=ReasonParameter(name="reason", label="Reason", default="forced", size=40),
        codebases=[
            util.CodebaseParameter(
                "",
                label="Source",
                branch=BranchParameter(name="branch", label="Branch", required=True),
                revision=RevisionParameter(
                    name="revision", label="Revision (empty = branch head)", default="",
                ),
                repository=util.ChoiceStringParameter(
                    name="repository", label="Repository", choices=urls, default=urls[0]
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
            StrictBooleanParameter(
                name="clean", label="Clean tree (make mrproper first)", default=False
            ),
            StrictBooleanParameter(
                name="force", label="Force rebuild (ignore a cache hit)", default=False
            ),
        ],
    )


def push_scheduler(repo: Repo) -> schedulers.AnyBranchScheduler:
    """Every wanted change of ``repo`` at once, for each of its push profiles' builders."""
    return schedulers.AnyBranchScheduler(
        name=push_scheduler_name(repo),
        change_filter=push_filter(repo),
        treeStableTimer=None,
        builderNames=[builder_name(repo, p) for p in repo.profiles],
    )


__all__ = [
    "BUILDER_PROFILE",
    "FORCE_NAME",
    "builder_name",
    "collapse_push_requests",
    "force_scheduler",
    "is_safe_branch",
    "push_filter",
    "push_scheduler",
    "push_scheduler_name",
]
