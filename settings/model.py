"""The settings model: one frozen dataclass per table of the settings file.

:class:`Settings` is the whole file as :func:`settings.load` returns it, every
table validated: the service tables (``master``, ``web``, ``hook``,
``databases``, ``paths``, ``workers``, ``repos``, ``janitor``), the config
profiles of ``kconfig/profiles.toml``, and the feature tables (``matrix``,
``try``, ``external``, ``artifacts``). Paths are absolute, optional values
that were left empty are resolved to what they mean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ktstr_steps.refnames import is_safe_branch

# -- service tables --------------------------------------------------------------


@dataclass(frozen=True)
class MasterSettings:
    title: str
    host: str
    basedir: Path
    pb_bind: str
    pb_port: int


@dataclass(frozen=True)
class WebSettings:
    bind: str
    port: int
    url: str
    anonymous_read: bool
    users_file: Path
    admins: tuple[str, ...]


@dataclass(frozen=True)
class HookSettings:
    user: str
    password_file: Path
    timeout: float


@dataclass(frozen=True)
class Databases:
    buildbot: str
    records: str


@dataclass(frozen=True)
class Paths:
    secrets: Path
    workers: Path
    tree_store: Path
    kernel_cache: Path
    # Tree store limits: trees per builder, GiB for all trees; 0 = no limit.
    max_trees: int = 0
    max_gb: float = 0.0


@dataclass(frozen=True)
class KconfigSettings:
    """``[kconfig]``: ``ktstr_fragment`` is the ktstr.kconfig of the user's ktstr (None:
    ktstr-ci's own kconfig/ktstr.kconfig); its bytes set the kc<crc> of every key."""

    ktstr_fragment: Path | None = None


@dataclass(frozen=True)
class ListedWorker:
    name: str
    host: str
    llc_index: int
    cpus: tuple[int, ...]


@dataclass(frozen=True)
class WorkersSettings:
    mode: str
    keepalive: int
    listed: tuple[ListedWorker, ...] = ()


@dataclass(frozen=True)
class Repo:
    name: str
    url: str
    hosted: bool
    branches: tuple[str, ...]
    profiles: tuple[str, ...]
    # The bare repository's directory when ``url`` is a local path, else None.
    path: Path | None = None

    def branch_wanted(self, branch: str) -> bool:
        """True when a push to ``branch`` should build: a safe name matching a pattern."""
        if not is_safe_branch(branch):
            return False
        return any(re.fullmatch(p, branch) for p in self.branches)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    base: str
    extra: tuple[str, ...]


@dataclass(frozen=True)
class Janitor:
    log_days: int
    build_data_days: int
    hour: int


@dataclass(frozen=True)
class Alerts:
    """The [alerts] table: the regressions that end a build WARNINGS (0 turns a rule off)."""

    new_warnings: bool = True
    bzimage_growth_pct: float = 2.0
    make_time_growth_pct: float = 25.0
    make_time_min_seconds: float = 30.0


# -- feature tables ----------------------------------------------------------------


@dataclass(frozen=True)
class MatrixSettings:
    """``[matrix]``: the nightly build of kernel versions x config profiles."""

    enabled: bool
    versions: tuple[str, ...]
    recent_days: int  # how far back a push makes a branch a recent-branches row
    profiles: tuple[str, ...]
    hour: int
    minute: int
    releases_url: str | None
    mirror: str | None
    rc_mirror: str | None
    download_cache: Path
    cpu_cap: int | None  # None: the worker's whole LLC group (llc_ncpus)
    download_max_files: int = 0  # 0 = no limit
    download_max_gb: float = 0.0


@dataclass(frozen=True)
class TrySettings:
    """``[try]``: the ``buildbot try`` port, its users and the builders it feeds."""

    port: int  # 0 = no try scheduler
    bind: str
    users: tuple[str, ...]
    users_file: Path
    repo: Repo
    profiles: tuple[str, ...]

    @property
    def strport(self) -> str:
        return f"tcp:{self.port}:interface={self.bind}"


@dataclass(frozen=True)
class Webhook:
    """One ``[[external.webhooks]]`` entry: a GitHub or GitLab project building a repo."""

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
    """One ``[[external.pollers]]`` entry: an upstream tree polled with git."""

    name: str
    url: str
    branches: tuple[str, ...]
    interval: int
    profiles: tuple[str, ...]
    # Where its builds report their state: "github"/"gitlab" and the project path, or None.
    service: str | None = None
    project: str | None = None

    def as_repo(self) -> Repo:
        """The poller as a repository: same builders, scheduler and filter as ``[[repos]]``."""
        return Repo(
            name=self.name, url=self.url, hosted=False, branches=self.branches,
            profiles=self.profiles,
        )


@dataclass(frozen=True)
class StatusSettings:
    """Commit statuses of webhook and poller builds: a token file per service (None = off)."""

    github_token_file: Path | None = None
    github_api: str = "https://api.github.com"
    gitlab_token_file: Path | None = None
    gitlab_api: str = "https://gitlab.com"
    context: str = "ktstr-ci"


@dataclass(frozen=True)
class ExternalSettings:
    """``[external]``: push webhooks and pollers of repositories hosted elsewhere."""

    webhooks: tuple[Webhook, ...] = ()
    pollers: tuple[Poller, ...] = ()
    statuses: StatusSettings = StatusSettings()


@dataclass(frozen=True)
class NotifySettings:
    """``[notify]``: mail when a branch turns red or green again, JSON POSTs of every build."""

    mail_to: tuple[str, ...] = ()
    mail_from: str = "ktstr-ci@localhost"
    smtp_host: str = "localhost"
    smtp_port: int = 25
    post_urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class ArtifactSettings:
    """``[artifacts]``: where published kernels are kept on the master, and for how long."""

    root: Path
    max_age_days: int  # 0 = keep regardless of age
    max_builds: int  # per builder; 0 = no limit
    sweep_minutes: int
    max_file_mb: int  # per uploaded file; 0 = no limit


# -- the whole file --------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    source: Path
    root: Path
    master: MasterSettings
    web: WebSettings
    hook: HookSettings
    databases: Databases
    paths: Paths
    workers: WorkersSettings
    repos: tuple[Repo, ...]
    profiles: dict[str, Profile]
    janitor: Janitor
    matrix: MatrixSettings
    try_: TrySettings  # the [try] table ("try" is a Python keyword)
    external: ExternalSettings
    artifacts: ArtifactSettings
    notify: NotifySettings
    kconfig: KconfigSettings = KconfigSettings()
    alerts: Alerts = Alerts()

    @property
    def web_url(self) -> str:
        return self.web.url or f"http://localhost:{self.web.port}/"

    @property
    def change_hook_url(self) -> str:
        # The hook runs on this host; it talks to the bind address directly.
        host = self.web.bind if self.web.bind not in ("", "0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.web.port}/change_hook/base"

    def worker_password_file(self, name: str) -> Path:
        return self.paths.secrets / "workers" / f"{name}.pass"
