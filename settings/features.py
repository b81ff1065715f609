"""The feature tables of the settings file: ``[matrix]``, ``[try]``, ``[external]``
and ``[artifacts]``.

Each is read like the service tables (:class:`~settings.reader.TableReader`,
the same error style) into its dataclass of :mod:`settings.model`. They come
after the service tables because they refer to them: repository names of
``[[repos]]``, profile names of ``kconfig/profiles.toml``, the ports and the
secrets directory. Unknown keys of these tables are refused when the file is
merged over the default, like everywhere else.
"""

from __future__ import annotations

import re
from pathlib import Path

from ktstr_steps.matrixspec import parse_spec
from settings.model import (
    ArtifactSettings,
    ExternalSettings,
    MasterSettings,
    MatrixSettings,
    NotifySettings,
    Paths,
    Poller,
    Profile,
    Repo,
    StatusSettings,
    TrySettings,
    Webhook,
    WebSettings,
)
from settings.reader import TableReader, abspath, file_error, is_remote

_TIME_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_TRY_USER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
WEBHOOK_SERVICES = ("github", "gitlab")
WEBHOOK_KEYS = ("repo", "service", "project", "secret_file", "strict")
POLLER_KEYS = ("name", "url", "branches", "interval", "profiles", "service", "project")
STATUS_SERVICES = ("github", "gitlab")
# An address as a mail relay takes it: no spaces, no angle brackets, one @.
MAIL_RE = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+$")
# GitHub "owner/name", GitLab "group/subgroup/project".
PROJECT_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$")


def default_matrix_profiles(repos: tuple[Repo, ...], profiles: dict[str, Profile]) -> list[str]:
    """``matrix.profiles = []``: every push profile of ``[[repos]]``, then ``default``.

    So each branch is also built with the config nobody builds on push.
    """
    names: list[str] = []
    for repo in repos:
        names += [p for p in repo.profiles if p not in names]
    if "default" in profiles and "default" not in names:
        names.append("default")
    return names


def matrix_table(r: TableReader, root: Path, repos: tuple[Repo, ...],
                 profiles: dict[str, Profile]) -> MatrixSettings:
    """``[matrix]``: version specs (the pipeline's grammar), profiles, the nightly time."""
    versions = r.strlist("versions")
    if not versions:
        raise r.err("versions", "must list at least one version spec")
    repo_names = {repo.name for repo in repos}
    for i, text in enumerate(versions):
        try:
            spec = parse_spec(text)
        except ValueError as exc:
            raise r.err(f"versions[{i}]", str(exc)) from None
        if spec.kind == "branch" and spec.repo not in repo_names:
            raise r.err(
                f"versions[{i}]",
                f"names the unknown repository {spec.repo!r} in {text!r}; known "
                f"repositories ([[repos]] names): {', '.join(sorted(repo_names))}",
            )
    if len(set(versions)) != len(versions):
        dup = next(v for v in versions if versions.count(v) > 1)
        raise r.err("versions", f"lists {dup!r} twice")
    names = r.strlist("profiles")
    r.profiles("profiles", names, profiles, each=True)
    if len(set(names)) != len(names):
        raise r.err("profiles", "lists a profile twice")
    if not names:
        names = default_matrix_profiles(repos, profiles)
    if not names:
        raise r.err("profiles", "is empty and no [[repos]] entry has push profiles; "
                                "list profiles from kconfig/profiles.toml")
    when = r.str("time")
    m = _TIME_RE.match(when)
    if not m:
        raise r.err("time", f'must be a time of day "HH:MM" (24-hour, e.g. "03:00"), not {when!r}')
    urls = {}
    for key in ("releases_url", "mirror", "rc_mirror"):
        value = r.str(key).strip()
        if value and not re.match(r"^https?://[^\s/]+", value):
            raise r.err(key, f'must be "" (the environment / kernel.org default) or an '
                             f"http(s):// URL, not {value!r}")
        urls[key] = value.rstrip("/") or None
    cache = r.str("download_cache")
    if not cache:
        raise r.err("download_cache", "must name a directory (e.g. \"var/downloads\")")
    cap = r.int("cpu_cap", 0, 4096)
    return MatrixSettings(
        enabled=r.bool("enabled"),
        versions=tuple(versions),
        recent_days=r.int("recent_days", 1, 3650),
        profiles=tuple(names),
        hour=int(m.group(1)),
        minute=int(m.group(2)),
        releases_url=urls["releases_url"],
        mirror=urls["mirror"],
        rc_mirror=urls["rc_mirror"],
        download_cache=abspath(root, cache),
        cpu_cap=cap or None,
        download_max_files=r.int("download_max_files", 0, 100_000),
        download_max_gb=r.gib("download_max_gb"),
    )


def try_table(r: TableReader, root: Path, *, master: MasterSettings, web: WebSettings,
              paths: Paths, repos: tuple[Repo, ...],
              profiles: dict[str, Profile]) -> TrySettings:
    """``[try]``: the ``buildbot try`` port and users, the repository and profiles built."""
    port = r.int("port", 0, 65535)
    if port and port in (web.port, master.pb_port):
        # The PB port of the workers has its own users; the web port speaks HTTP.
        raise r.err("port", f"must differ from web.port and master.pb_port, not {port}")
    users = tuple(r.strlist("users"))
    for name in users:
        if not _TRY_USER_RE.match(name):
            raise r.err("users", f"names {name!r}; use letters, digits, '_', '.' and '-'")
    if port and not users:
        raise r.err("users", "must name at least one user when try.port is set")
    repo_name = r.str("repo")
    repo = next((x for x in repos if x.name == repo_name), None) if repo_name else repos[0]
    if repo is None:
        known = ", ".join(x.name for x in repos)
        raise r.err("repo", f"names the unknown repository {repo_name!r} (known: {known})")
    built = r.profiles("profiles", r.strlist("profiles") or sorted(profiles), profiles)
    users_file = r.str("users_file")
    return TrySettings(
        port=port,
        bind=r.str("bind") or "127.0.0.1",
        users=users,
        # "" = beside the other generated secrets, so a settings file that moves
        # paths.secrets (a test, a second instance) moves this one too.
        users_file=abspath(root, users_file) if users_file else paths.secrets / "try-users.json",
        repo=repo,
        profiles=built,
    )


def external_table(r: TableReader, root: Path, *, paths: Paths, repos: tuple[Repo, ...],
                   profiles: dict[str, Profile]) -> ExternalSettings:
    """``[external]``: ``[[external.webhooks]]`` and ``[[external.pollers]]``."""
    return ExternalSettings(
        webhooks=_webhooks(r, root, paths, repos),
        pollers=_pollers(r, root, repos, profiles),
        statuses=_statuses(r, root),
    )


def _statuses(r: TableReader, root: Path) -> StatusSettings:
    """The commit-status keys of ``[external]``: a token file and an API URL per service."""
    def token(key: str) -> Path | None:
        text = r.str(key)
        return abspath(root, text) if text else None

    def api(key: str) -> str:
        url = r.str(key).rstrip("/")
        if not url.startswith(("https://", "http://")):
            raise r.err(key, f"must be an http(s) URL, not {url!r}")
        return url

    context = r.str("status_context")
    if not context.strip():
        raise r.err("status_context", "must not be empty")
    return StatusSettings(
        github_token_file=token("github_token_file"), github_api=api("github_api"),
        gitlab_token_file=token("gitlab_token_file"), gitlab_api=api("gitlab_api"),
        context=context,
    )


def notify_table(r: TableReader) -> NotifySettings:
    """``[notify]``: who is mailed when a branch turns red (and green again), where builds POST."""
    mail_to = r.strlist("mail_to")
    for i, addr in enumerate(mail_to):
        if not MAIL_RE.match(addr):
            raise r.err("mail_to", f"entry {i} {addr!r} is not a mail address (name@host)")
    mail_from = r.str("mail_from")
    if not MAIL_RE.match(mail_from):
        raise r.err("mail_from", f"{mail_from!r} is not a mail address (name@host)")
    host = r.str("smtp_host")
    if not host.strip():
        raise r.err("smtp_host", "must not be empty")
    urls = r.strlist("post_urls")
    for i, url in enumerate(urls):
        if not url.startswith(("https://", "http://")):
            raise r.err("post_urls", f"entry {i} {url!r} must be an http(s) URL")
    return NotifySettings(
        mail_to=tuple(mail_to), mail_from=mail_from, smtp_host=host,
        smtp_port=r.int("smtp_port", 1, 65535), post_urls=tuple(urls),
    )


def _webhooks(ext: TableReader, root: Path, paths: Paths,
              repos: tuple[Repo, ...]) -> tuple[Webhook, ...]:
    by_name = {x.name: x for x in repos}
    out: list[Webhook] = []
    seen: set[tuple[str, str]] = set()
    for r in ext.tables("webhooks"):
        r.check_keys(WEBHOOK_KEYS)
        repo_name = r.str("repo")
        if repo_name not in by_name:
            raise r.err("repo", f"names the unknown repository {repo_name!r}; [[repos]] names: "
                                f"{', '.join(sorted(by_name))}")
        service = r.str("service")
        if service not in WEBHOOK_SERVICES:
            raise r.err("service", f'must be "github" or "gitlab", not {service!r}')
        project = r.str("project")
        if not PROJECT_RE.match(project):
            raise r.err("project", "must be the project path as the service names it, e.g. "
                                   f'"owner/name" (GitHub) or "group/project" (GitLab), not {project!r}')
        if (service, project.lower()) in seen:
            raise r.err("project", f"{project!r} has a second {service} webhook entry")
        seen.add((service, project.lower()))
        secret = r.str("secret_file") if r.has("secret_file") else ""
        secret_file = (
            abspath(root, secret) if secret
            else paths.secrets / "webhooks" / f"{service}-{repo_name}.secret"
        )
        strict = r.bool("strict") if r.has("strict") else True
        out.append(Webhook(service=service, project=project, repo=by_name[repo_name],
                           secret_file=secret_file, strict=strict))
    # Two entries of one service sharing a secret file would let either
    # project's secret sign deliveries for the other.
    files = [(h.service, h.secret_file) for h in out]
    for i, key in enumerate(files):
        if key in files[:i]:
            raise file_error(ext.path, f"external.webhooks[{i}].secret_file {key[1]} is used by "
                                       f"another {key[0]} entry; give each project its own secret")
    return tuple(out)


def _pollers(ext: TableReader, root: Path, repos: tuple[Repo, ...],
             profiles: dict[str, Profile]) -> tuple[Poller, ...]:
    repo_names = {x.name for x in repos}
    out: list[Poller] = []
    names: set[str] = set()
    for r in ext.tables("pollers"):
        r.check_keys(POLLER_KEYS)
        name = r.name("name", names)
        if name in repo_names:
            raise r.err("name", f"{name!r} is already a [[repos]] name; builders are named "
                                "<name>-<profile>, so pick another name")
        url = r.str("url")
        if not url.strip():
            raise r.err("url", "must not be empty")
        if url.startswith("-"):
            raise r.err("url", f"must not start with '-' (git would read an option): {url!r}")
        if not is_remote(url):
            url = str(abspath(root, url))
        # Required: following every branch of an upstream kernel tree is rarely meant.
        branches = r.strlist("branches")
        if not branches:
            raise r.err("branches", 'must list at least one pattern, e.g. ["for-next"]')
        r.patterns("branches", branches)
        interval = r.int("interval", 1, 7 * 24 * 3600)
        built = r.strlist("profiles") if r.has("profiles") else ["tiny"]
        if not built:
            raise r.err("profiles", "must name at least one profile")
        service = r.str("service") if r.has("service") else None
        if service is not None and service not in STATUS_SERVICES:
            raise r.err("service", f'must be "github" or "gitlab", not {service!r}')
        project = r.str("project") if r.has("project") else None
        if (service is None) != (project is None):
            raise r.err("project" if service else "service",
                        "is missing: service and project go together (where the poller's "
                        "builds report their state), or leave both out")
        if project is not None and not PROJECT_RE.match(project):
            raise r.err("project", f'must be a project path like "owner/name", not {project!r}')
        out.append(Poller(name=name, url=url, branches=tuple(branches), interval=interval,
                          profiles=r.profiles("profiles", built, profiles),
                          service=service, project=project))
    return tuple(out)


def artifacts_table(r: TableReader, root: Path, master: MasterSettings) -> ArtifactSettings:
    """``[artifacts]``: the directory of published kernels and their retention."""
    where = r.str("dir")
    return ArtifactSettings(
        # "" = inside the master's directory: master data that moves with master.basedir.
        root=abspath(root, where) if where else master.basedir / "artifacts",
        max_age_days=r.int("max_age_days", 0, 36500),
        max_builds=r.int("max_builds", 0, 1_000_000),
        sweep_minutes=r.int("sweep_minutes", 1, 7 * 24 * 60),
        max_file_mb=r.int("max_file_mb", 0, 1 << 20),
    )
