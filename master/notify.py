"""Commit statuses and notifications, through Buildbot's own reporters.

* Commit statuses (``[external]`` ``github_token_file`` / ``gitlab_token_file``):
  a build that came from a GitHub or GitLab webhook (its change carries the
  ``external_service`` and ``external_project`` properties) or from a poller
  with ``service`` and ``project`` sets a status on its commit through
  ``GitHubStatusPush`` / ``GitLabStatusPush``: pending (GitLab: running) when
  it starts, then success or failure, linking to the build, with the kernel
  outcome in the description; one status per profile, ``<status_context>/<profile>``. Builds of the same builders pushed to the local
  bare repository report nothing: they have no project elsewhere.
* Mail (``[notify] mail_to``): Buildbot's ``MailNotifier`` when a branch's
  build turns red after a green one (or as the branch's first build), and when
  it turns green again. Buildbot's own "change" mode compares a build with the
  previous build of its *builder*, which here is usually another branch, so
  :class:`BranchTurnGenerator` finds the previous build of the same branch.
* JSON POSTs (``[notify] post_urls``): ``HttpStatusPush`` posts every finished
  build (with its properties) to each URL.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from buildbot.config.errors import ConfigErrors
from buildbot.process.properties import Interpolate
from buildbot.process.results import EXCEPTION, FAILURE, SUCCESS, WARNINGS, statusToString
from buildbot.reporters import utils
from buildbot.reporters.generators.build import (
    BuildStartEndStatusGenerator,
    BuildStatusGenerator,
)
from buildbot.reporters.github import GitHubStatusPush
from buildbot.reporters.gitlab import GitLabStatusPush
from buildbot.reporters.http import HttpStatusPush
from buildbot.reporters.mail import MailNotifier
from buildbot.reporters.message import (
    MessageFormatter,
    MessageFormatterFunction,
    MessageFormatterRenderable,
)
from twisted.internet import defer

from master.parts import ConfigPart
from master.pushes import pushed_repos
from master.schedulers import builder_name
from settings import Settings, read_secret

# GitHub refuses a status description over 140 characters.
DESCRIPTION_MAX = 140
# How far back a branch's previous build is looked for among its builder's builds.
PREVIOUS_LOOKBACK = 100

GREEN = (SUCCESS, WARNINGS)
RED = (FAILURE, EXCEPTION)


def prop(build: dict[str, Any], name: str) -> Any:
    """A build property's value from a reporter's build dict ({name: (value, source)})."""
    value = (build.get("properties") or {}).get(name)
    return value[0] if isinstance(value, (list, tuple)) and value else None


def end_description(build: dict[str, Any]) -> str:
    """``success: kernel cached (built (-j2))``: result, kernel outcome, the build's summary."""
    outcome = prop(build, "kernel_outcome")
    text = f"{statusToString(build.get('results'))}: "
    text += f"kernel {outcome}" if outcome else "no kernel outcome"
    summary = (build.get("state_string") or "").strip()
    if summary and summary != "finished":
        text += f" ({summary})"
    if len(text) > DESCRIPTION_MAX:
        text = text[: DESCRIPTION_MAX - 1] + "…"
    return text


class _ProjectStatus:
    """Report only builds that came from ``service``, on the project they came from.

    ``poller_projects`` maps a poller's builder names to its project. The
    report's sourcestamp is rewritten to name the project the way the stock
    reporter reads it (GitHub: ``project`` "owner/name"; GitLab: the path of
    ``repository``), so the request itself is Buildbot's.
    """

    service = ""

    def checkConfig(self, *args: Any, poller_projects: dict[str, str] | None = None,
                    **kwargs: Any) -> Any:
        return super().checkConfig(*args, **kwargs)  # type: ignore[misc]

    def reconfigService(self, *args: Any, poller_projects: dict[str, str] | None = None,
                        **kwargs: Any) -> Any:
        self.poller_projects = dict(poller_projects or {})
        return super().reconfigService(*args, **kwargs)  # type: ignore[misc]

    def project_of(self, build: dict[str, Any]) -> str | None:
        if prop(build, "external_service") == self.service:
            project = prop(build, "external_project")
            return str(project) if project else None
        return self.poller_projects.get((build.get("builder") or {}).get("name"))

    def sendMessage(self, reports: list[dict[str, Any]]) -> Any:
        build = reports[0]["builds"][0]
        project = self.project_of(build)
        if project is None:
            return defer.succeed(None)
        report = dict(reports[0])
        build = dict(build)
        buildset = copy.deepcopy(build["buildset"])
        for ss in buildset.get("sourcestamps") or []:
            ss["project"] = project
            ss["repository"] = f"https://{self.service}.invalid/{project}.git"
        build["buildset"] = buildset
        report["builds"] = [build, *report["builds"][1:]]
        return super().sendMessage([report, *reports[1:]])  # type: ignore[misc]


class ProjectGitHubStatusPush(_ProjectStatus, GitHubStatusPush):
    service = "github"


class ProjectGitLabStatusPush(_ProjectStatus, GitLabStatusPush):
    service = "gitlab"


class BranchTurnGenerator(BuildStatusGenerator):
    """A message when a branch's build turns red, or green again (module docstring).

    Only verdicts count: a build that was cancelled, skipped or retried says
    nothing about the branch and is neither reported nor compared with.
    """

    def __init__(self, *, builders: list[str] | None = None,
                 message_formatter: Any = None) -> None:
        super().__init__(mode=("change",), builders=builders, message_formatter=message_formatter)

    @defer.inlineCallbacks
    def generate(self, master: Any, reporter: Any, key: Any, build: dict[str, Any]) -> Any:
        yield utils.getDetailsForBuild(master, build, want_properties=True,
                                       want_steps=self.formatter.want_steps)
        if not self.is_message_needed_by_props(build):
            return None
        if build["results"] not in GREEN + RED:
            return None
        previous = yield previous_verdict(master, build)
        red = build["results"] in RED
        # A branch's first verdict is news only when it is red.
        turned = red if previous is None else red != (previous in RED)
        if not turned:
            return None
        # Other reporters get the same build dict: the additions go on a copy.
        build = dict(build)
        build["ktstr_turn"] = "red" if red else "green"
        build["ktstr_branch"] = prop(build, "branch") or "(no branch)"
        build["ktstr_outcome"] = end_description(build)
        report = yield self.build_message(self.formatter, master, reporter, build)
        return report


@defer.inlineCallbacks
def previous_verdict(master: Any, build: dict[str, Any]) -> Any:
    """The result of the latest earlier green or red build of the same builder and branch."""
    branch = prop(build, "branch")
    n = build["number"] - 1
    stop = max(-1, n - PREVIOUS_LOOKBACK)
    while n > stop:
        prev = yield master.data.get(("builders", build["builderid"], "builds", n))
        n -= 1
        if not prev or prev["results"] not in GREEN + RED:
            continue  # unfinished, cancelled, skipped, retried: no verdict
        props = yield master.data.get(("builds", prev["buildid"], "properties"))
        if (props or {}).get("branch", (None,))[0] == branch:
            return prev["results"]
    return None


MAIL_SUBJECT = ("ktstr-ci: {{ build['ktstr_branch'] }} is {{ build['ktstr_turn'] }} "
                "({{ buildername }} #{{ build['number'] }})")
MAIL_BODY = """\
{% if build['ktstr_turn'] == 'red' -%}
The branch {{ build['ktstr_branch'] }} broke on {{ buildername }}.
{%- else -%}
The branch {{ build['ktstr_branch'] }} builds again on {{ buildername }}.
{%- endif %}

Build:    {{ build_url }}
Result:   {{ build['ktstr_outcome'] }}
Revision: {% for ss in sourcestamps %}{{ ss['revision'] }} {% endfor %}
"""


def _token(path: Path | None, service: str) -> str | None:
    if path is None:
        return None
    token = read_secret(path)
    if not token:
        raise ConfigErrors([
            f"[external] {service}_token_file {path} is missing or empty: put a {service} "
            "token in it (mode 0600), or set the key to \"\" to send no commit statuses"])
    return token


def status_services(settings: Settings) -> list[Any]:
    """One status reporter per service that has a token file."""
    st = settings.external.statuses
    out: list[Any] = []
    for service, path, api, cls in (
        ("github", st.github_token_file, st.github_api, ProjectGitHubStatusPush),
        ("gitlab", st.gitlab_token_file, st.gitlab_api, ProjectGitLabStatusPush),
    ):
        token = _token(path, service)
        if token is None:
            continue
        hooked = {h.repo.name for h in settings.external.webhooks if h.service == service}
        pollers = {p.name: p.project for p in settings.external.pollers
                   if p.service == service and p.project}
        # Every profile's builder: a forced build of a webhook's revision reports too.
        builders = {builder_name(repo, profile): repo.name for repo in pushed_repos(settings)
                    if repo.name in hooked or repo.name in pollers
                    for profile in settings.profiles}
        poller_projects = {b: pollers[r] for b, r in builders.items() if r in pollers}
        generator = BuildStartEndStatusGenerator(
            builders=sorted(builders),
            start_formatter=MessageFormatterRenderable("ktstr-ci: build started"),
            end_formatter=MessageFormatterFunction(lambda ctx: end_description(ctx["build"]),
                                                   "plain", want_properties=True),
        )
        # One status per profile: a tiny and a defconfig build of one commit are two checks.
        context = Interpolate(st.context.replace("%", "%%") + "/%(prop:profile)s")
        out.append(cls(token, context=context, baseURL=api, generators=[generator],
                       poller_projects=poller_projects, name=f"ktstr-status-{service}"))
    return out


def notify_services(settings: Settings) -> list[Any]:
    n = settings.notify
    out: list[Any] = []
    if n.mail_to:
        formatter = MessageFormatter(template=MAIL_BODY, subject=MAIL_SUBJECT,
                                     template_type="plain", want_properties=True)
        out.append(MailNotifier(
            fromaddr=n.mail_from, relayhost=n.smtp_host, smtpPort=n.smtp_port,
            sendToInterestedUsers=False, extraRecipients=list(n.mail_to),
            generators=[BranchTurnGenerator(message_formatter=formatter)],
        ))
    for i, url in enumerate(n.post_urls):
        formatter = MessageFormatterFunction(lambda ctx: ctx["build"], "json",
                                             want_properties=True)
        out.append(HttpStatusPush(url, name=f"ktstr-post-{i}", generators=[
            BuildStatusGenerator(mode="all", message_formatter=formatter)]))
    return out


def config_part(settings: Settings) -> ConfigPart:
    """Commit statuses, mail and JSON POSTs: reporter services only."""
    return ConfigPart(
        feature="notify",
        where=f"settings file {settings.source}: [notify] / [external]",
        services=[*status_services(settings), *notify_services(settings)],
    )

