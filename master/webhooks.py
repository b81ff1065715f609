"""GitHub and GitLab push webhooks: ``/change_hook/github`` and ``/change_hook/gitlab``.

Settings: ``settings.external.webhooks`` (``[[external.webhooks]]`` of
settings/default.toml)::

    [[external.webhooks]]
    repo = "sched-ext"            # a [[repos]] entry: its push builders build the push
    service = "github"            # or "gitlab"
    project = "sched-ext/linux"   # GitHub owner/name, GitLab group/project path
    secret_file = ""              # "" = <paths.secrets>/webhooks/<service>-<repo>.secret
    strict = true                 # refuse deliveries without a signature/token

Like ``/change_hook/base`` the webhooks sit behind the hook user's HTTP Basic
auth (``change_hook_auth`` covers every dialect), so the URL given to GitHub or
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
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import urllib.parse
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

from buildbot.www.hooks.base import BaseHookHandler
from twisted.internet import defer
from twisted.python import log

from ktstr_steps.refnames import RULE, branch_problem, revision_problem, shown
from master.parts import ConfigPart
from settings import Settings, Webhook, ensure_webhook_secrets, read_secret

# A change lists at most this many file names (a push can touch tens of thousands).
MAX_FILES = 1000


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
    def _lenient(hooks: list[Webhook], refusal: str) -> list[Webhook]:
        """The entries that take a delivery without a signature (``strict = false``)."""
        lenient = [h for h in hooks if not h.strict]
        if not lenient:
            raise Refused(refusal)
        return lenient

    def _signed_by(self, hooks: list[Webhook], check: Callable[[bytes], bool]) -> list[Webhook]:
        """The entries whose secret passes ``check``; one whose secret file is missing never does."""
        out = []
        for hook in hooks:
            secret = self._secret(hook)
            if secret is not None and check(secret):
                out.append(hook)
        return out

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
            return self._lenient(hooks, "unsigned delivery: X-Hub-Signature-256 is required "
                                        "(set the webhook's secret on GitHub)")
        ok = self._signed_by(hooks, lambda secret: all(
            hmac.compare_digest(hmac.new(secret, body, d).hexdigest(), want) for d, want in sigs))
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
            return self._lenient(hooks, "delivery without X-Gitlab-Token (set the webhook's "
                                        "secret token in GitLab)")
        ok = self._signed_by(hooks, lambda secret: hmac.compare_digest(secret, token))
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


def config_part(settings: Settings) -> ConfigPart:
    """A www change hook dialect per service that has ``[[external.webhooks]]`` entries."""
    hooks = settings.external.webhooks
    ensure_webhook_secrets(settings)
    dialects: dict[str, dict[str, Any]] = {}
    for service, cls in (("github", GitHubHook), ("gitlab", GitLabHook)):
        mine = [h for h in hooks if h.service == service]
        if mine:  # an unconfigured dialect is refused by Buildbot ("not whitelisted")
            dialects[service] = {"custom_class": cls, "hooks": mine}
    return ConfigPart(feature="webhooks", where=f"settings file {settings.source}: "
                      "external.webhooks", dialects=dialects)
