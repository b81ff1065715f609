"""External repositories: GitHub/GitLab push webhooks and git pollers of upstream trees.

Settings (``[external]``, see ``master/settings.default.toml``)::

    [[external.webhooks]]
    repo = "sched-ext"            # a [[repos]] entry: its push builders build the push
    service = "github"            # or "gitlab"
    project = "sched-ext/linux"   # GitHub owner/name, GitLab group/project path
    secret_file = ""              # "" = <paths.secrets>/webhooks/<service>-<repo>.secret
    strict = true                 # refuse deliveries without a signature/token

    [[external.pollers]]
    name = "sched-ext-next"       # builders <name>-<profile>, scheduler push-<name>
    url = "https://git.kernel.org/pub/scm/linux/kernel/git/tj/sched_ext.git"
    branches = ["for-next"]       # regular expressions, whole branch name
    interval = 300                # seconds between polls
    profiles = ["tiny"]           # profiles built for each new commit

Webhooks are served at ``/change_hook/github`` and ``/change_hook/gitlab``.
Like ``/change_hook/base`` they sit behind the hook user's HTTP Basic auth
(``change_hook_auth`` covers every dialect), so the URL given to GitHub or
GitLab carries it: ``https://hook:<hook password>@ci.example.org/change_hook/github``.
On top of that each delivery must carry the project's own secret:

* GitHub: ``X-Hub-Signature-256`` (HMAC-SHA256 of the body) and/or
  ``X-Hub-Signature`` (HMAC-SHA1). Buildbot 4.3's own GitHub hook verifies only
  the SHA-1 header, so this module has its own handler: every signature header
  present must verify, and at least one must be present unless ``strict = false``;
* GitLab: ``X-Gitlab-Token`` equal to the secret (GitLab sends the token as is).

The secret is chosen by trying each configured project's secret against the
signature before the body is parsed, then the payload's project must be one
whose secret verified. Refusals are HTTP 400 with the reason as the answer:
Buildbot's change hook resource maps every handler error to 400 (401 comes
from the Basic auth in front). A push becomes one change for the pushed tip,
with ``repository`` set to the target repo's url and ``project`` to its name,
so the repo's own push scheduler (:func:`master.schedulers.push_filter`)
picks it up and its branch-safety and pattern filter applies as for pushes.
Branch names that are not safe or match none of the repo's patterns, tag
pushes and deletions produce no change; the answer and the master log say so.

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
import hashlib
import hmac
import json
import re
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from buildbot.config.errors import ConfigErrors
from buildbot.plugins import changes
from buildbot.process.factory import BuildFactory
from buildbot.www.hooks.base import BaseHookHandler
from twisted.internet import defer
from twisted.python import log

from ktstr_steps.refnames import RULE, branch_problem, revision_problem, shown
from master.settings import (
    NAME_RE,
    Repo,
    Settings,
    SettingsError,
    _Reader,
    ensure_secret,
    read_secret,
)

SERVICES = ("github", "gitlab")
WEBHOOK_KEYS = ("repo", "service", "project", "secret_file", "strict")
POLLER_KEYS = ("name", "url", "branches", "interval", "profiles")
# GitHub "owner/name", GitLab "group/subgroup/project".
PROJECT_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$")
MAX_FILES = 1000


@dataclass(frozen=True)
class Webhook:
    service: str
    project: str
    repo: Repo
    secret_file: Path
    strict: bool

    def matches(self, project: str) -> bool:
        # GitHub and GitLab treat project paths case-insensitively.
        return self.project.lower() == project.lower()


@dataclass(frozen=True)
class Poller:
    name: str
    url: str
    branches: tuple[str, ...]
    interval: int
    profiles: tuple[str, ...]

    def as_repo(self) -> Repo:
        """The poller as a repository: same builders, scheduler and filter as ``[[repos]]``."""
        return Repo(
            name=self.name, url=self.url, hosted=False, branches=self.branches,
            profiles=self.profiles,
        )


@dataclass(frozen=True)
class External:
    webhooks: tuple[Webhook, ...] = ()
    pollers: tuple[Poller, ...] = ()


# -- settings ----------------------------------------------------------------


def parse(settings: Settings) -> External:
    """Validate ``settings.extensions["external"]``; SettingsError names file and key."""
    src = settings.source
    table = settings.extensions.get("external") or {}
    unknown = sorted(set(table) - {"webhooks", "pollers"})
    if unknown:
        raise SettingsError(
            f"settings file {src}: external.{unknown[0]} is not a known key (webhooks, pollers)"
        )
    return External(
        webhooks=_webhooks(settings, table.get("webhooks", [])),
        pollers=_pollers(settings, table.get("pollers", [])),
    )


def _items(src: Path, key: str, items: Any) -> list[dict]:
    if not isinstance(items, list):
        raise SettingsError(f"settings file {src}: external.{key} must be an array of tables "
                            f"([[external.{key}]])")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise SettingsError(f"settings file {src}: external.{key}[{i}] must be a table")
    return items


def _check_keys(r: _Reader, item: dict, known: tuple[str, ...]) -> None:
    unknown = sorted(set(item) - set(known))
    if unknown:
        raise r.err(unknown[0], f"is not a known key ({', '.join(known)})")


def _webhooks(settings: Settings, items: Any) -> tuple[Webhook, ...]:
    src = settings.source
    repos = {r.name: r for r in settings.repos}
    out: list[Webhook] = []
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(_items(src, "webhooks", items)):
        r = _Reader(src, item, f"external.webhooks[{i}].")
        _check_keys(r, item, WEBHOOK_KEYS)
        repo_name = r.str("repo")
        if repo_name not in repos:
            raise r.err("repo", f"names the unknown repository {repo_name!r}; [[repos]] names: "
                                f"{', '.join(sorted(repos))}")
        service = r.str("service")
        if service not in SERVICES:
            raise r.err("service", f'must be "github" or "gitlab", not {service!r}')
        project = r.str("project")
        if not PROJECT_RE.match(project):
            raise r.err("project", "must be the project path as the service names it, e.g. "
                                   f'"owner/name" (GitHub) or "group/project" (GitLab), not {project!r}')
        if (service, project.lower()) in seen:
            raise r.err("project", f"{project!r} has a second {service} webhook entry")
        seen.add((service, project.lower()))
        secret = r.str("secret_file") if "secret_file" in item else ""
        secret_file = (
            _abspath(settings.root, secret) if secret
            else settings.paths.secrets / "webhooks" / f"{service}-{repo_name}.secret"
        )
        strict = r.bool("strict") if "strict" in item else True
        out.append(Webhook(service=service, project=project, repo=repos[repo_name],
                           secret_file=secret_file, strict=strict))
    # Two entries of one service sharing a secret file would let either
    # project's secret sign deliveries for the other.
    files = [(h.service, h.secret_file) for h in out]
    for i, key in enumerate(files):
        if key in files[:i]:
            raise SettingsError(f"settings file {src}: external.webhooks[{i}].secret_file "
                                f"{key[1]} is used by another {key[0]} entry; give each project "
                                "its own secret")
    return tuple(out)


def _pollers(settings: Settings, items: Any) -> tuple[Poller, ...]:
    src = settings.source
    repo_names = {r.name for r in settings.repos}
    out: list[Poller] = []
    names: set[str] = set()
    for i, item in enumerate(_items(src, "pollers", items)):
        r = _Reader(src, item, f"external.pollers[{i}].")
        _check_keys(r, item, POLLER_KEYS)
        name = r.str("name")
        if not NAME_RE.match(name):
            raise r.err("name", f"must be letters, digits, '-' and '_', not {name!r}")
        if name in names:
            raise r.err("name", f"{name!r} is used twice")
        if name in repo_names:
            raise r.err("name", f"{name!r} is already a [[repos]] name; builders are named "
                                "<name>-<profile>, so pick another name")
        names.add(name)
        url = r.str("url")
        if not url.strip():
            raise r.err("url", "must not be empty")
        if url.startswith("-"):
            raise r.err("url", f"must not start with '-' (git would read an option): {url!r}")
        is_remote = "://" in url or re.match(r"^[\w.-]+@[\w.-]+:", url)
        if not is_remote:
            url = str(_abspath(settings.root, url))
        # Required: following every branch of an upstream kernel tree is rarely meant.
        branches = r.strlist("branches")
        if not branches:
            raise r.err("branches", 'must list at least one pattern, e.g. ["for-next"]')
        for pat in branches:
            try:
                re.compile(pat)
            except re.error as exc:
                raise r.err("branches", f"has an invalid regular expression {pat!r}: {exc}") from None
        interval = r.int("interval", 1, 7 * 24 * 3600)
        profiles = r.strlist("profiles") if "profiles" in item else ["tiny"]
        if not profiles:
            raise r.err("profiles", "must name at least one profile")
        for prof in profiles:
            if prof not in settings.profiles:
                raise r.err("profiles", f"names the unknown profile {prof!r}; known profiles "
                                        f"(kconfig/profiles.toml): {', '.join(sorted(settings.profiles))}")
        out.append(Poller(name=name, url=url, branches=tuple(branches), interval=interval,
                          profiles=tuple(profiles)))
    return tuple(out)


def _abspath(root: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else root / p


def ensure_secrets(settings: Settings) -> list[Path]:
    """Generate every webhook secret file that does not exist yet; returns all of them."""
    ext = parse(settings)
    for hook in ext.webhooks:
        ensure_secret(hook.secret_file)
    return [h.secret_file for h in ext.webhooks]


# -- webhooks ------------------------------------------------------------------


class Refused(ValueError):
    """A delivery we do not accept; Buildbot's change hook answers 400 with this message."""


def _header(request: Any, name: str) -> str:
    value = request.getHeader(name.encode())
    return value.decode("latin-1").strip() if value else ""


def _say(request: Any, text: str) -> None:
    # Written before Buildbot's own "N change found", so the sender (GitHub's
    # delivery log, curl) sees why nothing was built.
    log.msg(f"ktstr-ci: {text}")
    request.write(f"ktstr-ci: {text}\n".encode())


def _get(payload: Any, *path: str) -> Any:
    """``payload[path[0]][path[1]]...``, or a Refused naming the missing field."""
    cur = payload
    for i, key in enumerate(path):
        if not isinstance(cur, dict) or key not in cur:
            raise Refused(f"not a push payload: field {'.'.join(path[: i + 1])} is missing")
        cur = cur[key]
    return cur


def _when(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _person(p: Any) -> str:
    if not isinstance(p, dict):
        return ""
    name, email = str(p.get("name") or ""), str(p.get("email") or "")
    return f"{name} <{email}>" if email else name


class _WebhookHandler(BaseHookHandler):
    """Common part of the GitHub and GitLab handlers (registered with ``custom_class``)."""

    service: ClassVar[str]
    label: ClassVar[str]

    def _hooks(self) -> list[Webhook]:
        # Buildbot caches the handler object across reconfigs but replaces the
        # dialect options; read the current ones so a reconfig takes effect.
        current = None
        cfg = getattr(self.master, "config", None)
        if cfg is not None:
            current = (cfg.www.get("change_hook_dialects") or {}).get(self.service)
        options = current if isinstance(current, dict) else (self.options or {})
        return list(options.get("hooks", []))

    def getChanges(self, request: Any) -> defer.Deferred:
        try:
            result = self._changes(request)
        except Refused as exc:
            peer = getattr(request.getClientAddress(), "host", "?")
            log.msg(f"ktstr-ci: refused {self.label} webhook delivery from {peer}: {exc}")
            return defer.fail(exc)
        return defer.succeed(result)

    def _changes(self, request: Any) -> tuple[list[dict[str, Any]], str]:
        raise NotImplementedError

    @staticmethod
    def _secret(hook: Webhook) -> bytes | None:
        # Read per delivery: a rotated secret file applies without a restart.
        value = read_secret(hook.secret_file)
        if value is None:
            log.msg(f"ktstr-ci: {hook.service} webhook secret file {hook.secret_file} is "
                    f"missing; deliveries for {hook.project} are refused until it exists")
            return None
        return value.encode()

    @staticmethod
    def _json(request: Any, body: bytes) -> dict[str, Any]:
        ctype = _header(request, "Content-Type").split(";")[0].strip().lower()
        text: str | bytes = body
        if ctype == "application/x-www-form-urlencoded":
            # GitHub's "application/x-www-form-urlencoded" content type: payload=<json>
            form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
            if "payload" not in form:
                raise Refused("malformed body: form without a payload field")
            text = form["payload"][0]
        try:
            payload = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refused(f"malformed JSON body: {exc}") from None
        if not isinstance(payload, dict):
            raise Refused("malformed JSON body: not an object")
        return payload

    def _pick(self, project: Any, hooks: list[Webhook], verified: list[Webhook]) -> Webhook:
        if not isinstance(project, str):
            raise Refused("not a push payload: the project name is not a string")
        for hook in verified:
            if hook.matches(project):
                return hook
        if any(h.matches(project) for h in hooks):
            raise Refused(f"signature mismatch: not signed with the secret of {project}")
        raise Refused(f"{self.label} project {project} has no [[external.webhooks]] entry")

    def _push_change(self, request: Any, hook: Webhook, *, ref: str, after: str,
                     head: dict[str, Any], commits: list[Any], revlink: str) -> list[dict]:
        """One change for the pushed tip, or [] with the reason told to the sender."""
        repo = hook.repo
        where = f"{self.label} push to {hook.project} {ref}"
        if not isinstance(ref, str) or not ref.startswith("refs/heads/"):
            _say(request, f"{where}: not a branch (tags are stored, not built)")
            return []
        branch = ref[len("refs/heads/"):]
        if not isinstance(after, str) or set(after) == {"0"}:
            _say(request, f"{where}: branch deleted; nothing to build")
            return []
        problem = branch_problem(branch)
        if problem is not None:
            # The name would reach worker paths and commands: refuse it here
            # already, so it is not even recorded as a change.
            _say(request, f"{where}: branch name {shown(branch)} is not built: {problem}; {RULE}")
            return []
        if not repo.branch_wanted(branch):
            _say(request, f"{where}: branch {branch} matches none of the build patterns "
                          f"{list(repo.branches)} of repository {repo.name}; not built")
            return []
        problem = revision_problem(after)
        if problem is not None:
            raise Refused(f"not a push payload: revision {shown(after)}: {problem}")
        files: list[str] = []
        for c in commits:
            if isinstance(c, dict):
                for kind in ("added", "modified", "removed"):
                    files += [f for f in c.get(kind) or [] if isinstance(f, str)]
        change: dict[str, Any] = {
            "revision": after,
            "branch": branch,
            # The target repo's own url and name: its push scheduler's filter
            # compares the repository, and its builders fetch from that url.
            "repository": repo.url,
            "project": repo.name,
            "category": "push",
            "author": _person(head.get("author")) or "unknown",
            "committer": _person(head.get("committer")) or None,
            "comments": str(head.get("message") or ""),
            "files": sorted(set(files))[:MAX_FILES],
            "revlink": revlink if isinstance(revlink, str) else "",
            "properties": {
                "event": "push",
                "external_service": self.service,
                "external_project": hook.project,
            },
        }
        when = _when(head.get("timestamp"))
        if when is not None:
            change["when_timestamp"] = when
        _say(request, f"{where}: build of {repo.name} {branch} at {after[:12]} requested")
        return [change]


class GitHubHook(_WebhookHandler):
    """``/change_hook/github``: push events, HMAC-SHA256 and/or HMAC-SHA1 signatures."""

    service = "github"
    label = "GitHub"
    HEADERS: ClassVar[tuple[tuple[str, str, Callable[..., Any]], ...]] = (
        ("X-Hub-Signature-256", "sha256", hashlib.sha256),
        ("X-Hub-Signature", "sha1", hashlib.sha1),
    )

    def _verified(self, request: Any, body: bytes, hooks: list[Webhook]) -> list[Webhook]:
        """The entries whose secret produced every signature header present."""
        sigs: list[tuple[Callable[..., Any], str]] = []
        for header, prefix, digest in self.HEADERS:
            value = _header(request, header)
            if not value:
                continue
            algo, _, hexdigest = value.partition("=")
            if algo != prefix or not re.fullmatch(r"[0-9a-fA-F]+", hexdigest):
                raise Refused(f"malformed {header} header (expected {prefix}=<hex digest>)")
            sigs.append((digest, hexdigest.lower()))
        if not sigs:
            lenient = [h for h in hooks if not h.strict]
            if not lenient:
                raise Refused("unsigned delivery: X-Hub-Signature-256 is required "
                              "(set the webhook's secret on GitHub)")
            return lenient
        ok = []
        for hook in hooks:
            secret = self._secret(hook)
            if secret is None:
                continue
            if all(hmac.compare_digest(hmac.new(secret, body, d).hexdigest(), want)
                   for d, want in sigs):
                ok.append(hook)
        if not ok:
            raise Refused("signature mismatch: the delivery is not signed with the secret of "
                          "any configured GitHub project")
        return ok

    def _changes(self, request: Any) -> tuple[list[dict[str, Any]], str]:
        body = request.content.read()
        event = _header(request, "X-GitHub-Event")
        if not event:
            raise Refused("not a GitHub delivery: the X-GitHub-Event header is missing")
        hooks = [h for h in self._hooks() if h.service == self.service]
        # Authenticate before parsing anything the sender wrote.
        verified = self._verified(request, body, hooks)
        payload = self._json(request, body)
        if event == "ping":
            repo = payload.get("repository")
            name = repo.get("full_name") if isinstance(repo, dict) else None
            _say(request, f"GitHub ping for {name or '?'} received")
            return [], "git"
        project = _get(payload, "repository", "full_name")
        hook = self._pick(project, hooks, verified)
        if event != "push":
            _say(request, f"GitHub {event} event for {project} ignored: only push events build")
            return [], "git"
        head = payload.get("head_commit") or {}
        return self._push_change(
            request, hook, ref=_get(payload, "ref"), after=_get(payload, "after"),
            head=head if isinstance(head, dict) else {},
            commits=payload.get("commits") or [],
            revlink=head.get("url") if isinstance(head, dict) else payload.get("compare", ""),
        ), "git"

class GitLabHook(_WebhookHandler):
    """``/change_hook/gitlab``: Push Hook events with the ``X-Gitlab-Token`` secret."""

    service = "gitlab"
    label = "GitLab"

    def _verified(self, request: Any, body: bytes, hooks: list[Webhook]) -> list[Webhook]:
        token = _header(request, "X-Gitlab-Token").encode()
        if not token:
            lenient = [h for h in hooks if not h.strict]
            if not lenient:
                raise Refused("delivery without X-Gitlab-Token (set the webhook's secret token "
                              "in GitLab)")
            return lenient
        ok = []
        for hook in hooks:
            secret = self._secret(hook)
            if secret is not None and hmac.compare_digest(secret, token):
                ok.append(hook)
        if not ok:
            raise Refused("wrong X-Gitlab-Token: it is not the secret of any configured GitLab "
                          "project")
        return ok

    def _changes(self, request: Any) -> tuple[list[dict[str, Any]], str]:
        body = request.content.read()
        hooks = [h for h in self._hooks() if h.service == self.service]
        verified = self._verified(request, body, hooks)
        payload = self._json(request, body)
        kind = payload.get("object_kind") or _header(request, "X-Gitlab-Event")
        project = _get(payload, "project", "path_with_namespace")
        hook = self._pick(project, hooks, verified)
        if kind == "tag_push" or kind == "Tag Push Hook":
            _say(request, f"GitLab tag push to {project} {payload.get('ref')}: tags are stored, "
                          "not built")
            return [], "git"
        if kind not in ("push", "Push Hook"):
            _say(request, f"GitLab {kind} event for {project} ignored: only push events build")
            return [], "git"
        after = _get(payload, "after")
        commits = [c for c in payload.get("commits") or [] if isinstance(c, dict)]
        # GitLab lists up to 20 commits, oldest first; the tip is checkout_sha.
        tip = payload.get("checkout_sha") or after
        head = next((c for c in commits if c.get("id") == tip), commits[-1] if commits else {})
        return self._push_change(
            request, hook, ref=_get(payload, "ref"), after=after, head=head, commits=commits,
            revlink=head.get("url", ""),
        ), "git"


# -- pollers -------------------------------------------------------------------


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


# -- configure ---------------------------------------------------------------


def configure(c: dict[str, Any], settings: Settings, specs: list[Any], *,
              factory: Callable[..., BuildFactory] | None = None) -> None:
    """Add webhooks (www dialects), pollers (change sources, builders, schedulers) to ``c``."""
    try:
        ext = parse(settings)
    except SettingsError as exc:
        # One clear line in checkconfig / the master log instead of a traceback.
        raise ConfigErrors([str(exc)]) from None
    for service in SERVICES:
        hooks = [h for h in ext.webhooks if h.service == service]
        if not hooks:
            continue  # an unconfigured dialect is refused by Buildbot ("not whitelisted")
        for h in hooks:
            ensure_secret(h.secret_file)
        cls = GitHubHook if service == "github" else GitLabHook
        c["www"].setdefault("change_hook_dialects", {})[service] = {
            "custom_class": cls, "hooks": hooks,
        }
    if ext.pollers:
        _configure_pollers(c, settings, specs, ext.pollers, factory)


def _configure_pollers(c: dict[str, Any], settings: Settings, specs: list[Any],
                       pollers: Iterable[Poller], factory: Callable[..., BuildFactory] | None
                       ) -> None:
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
