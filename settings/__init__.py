"""The ktstr-ci settings: one TOML file, loaded once into frozen dataclasses.

``settings.load()`` reads the file (see :mod:`settings.loader` for which one),
merges it over the commented default ``settings/default.toml`` and validates
every table into one :class:`Settings`: ``settings.master``, ``.web``,
``.hook``, ``.databases``, ``.paths``, ``.workers``, ``.repos``,
``.profiles``, ``.janitor`` and the feature tables ``.matrix``, ``.try_``,
``.external``, ``.artifacts``. Every error names the file and the key
(``web.port``, ``repos[0].profiles``) and says what is accepted.

The package imports no Buildbot or Twisted code: the master, the workers, the
git hooks and the ``make run`` launcher all read the settings through it.

* :mod:`settings.reader`: typed table access, :class:`SettingsError`;
* :mod:`settings.model`: the dataclasses;
* :mod:`settings.tables`: the service tables; :mod:`settings.features`: the
  feature tables; :mod:`settings.profiles`: ``kconfig/profiles.toml``;
* :mod:`settings.loader`: which file, the merge, :func:`load`;
* :mod:`settings.secrets`: the generated passwords and users files;
* :mod:`settings.worker_specs`: which workers exist (the settings and this
  host's LLC groups); imported on its own, not re-exported here, so a git
  hook that reads the settings does not read the host topology.
"""

from settings.loader import DEFAULT_FILE, ENV_VAR, REPO_ROOT, load, settings_path
from settings.model import (
    ArtifactSettings,
    Databases,
    ExternalSettings,
    HookSettings,
    Janitor,
    KconfigSettings,
    ListedWorker,
    MasterSettings,
    MatrixSettings,
    NotifySettings,
    Paths,
    Poller,
    Profile,
    Repo,
    Settings,
    StatusSettings,
    TrySettings,
    Webhook,
    WebSettings,
    WorkersSettings,
)
from settings.reader import NAME_RE, SettingsError
from settings.secrets import (
    ensure_secret,
    ensure_users,
    ensure_webhook_secrets,
    read_secret,
    read_users,
)

__all__ = [
    "DEFAULT_FILE",
    "ENV_VAR",
    "NAME_RE",
    "REPO_ROOT",
    "ArtifactSettings",
    "Databases",
    "ExternalSettings",
    "HookSettings",
    "Janitor",
    "KconfigSettings",
    "ListedWorker",
    "MasterSettings",
    "MatrixSettings",
    "NotifySettings",
    "Paths",
    "Poller",
    "Profile",
    "Repo",
    "Settings",
    "SettingsError",
    "StatusSettings",
    "TrySettings",
    "WebSettings",
    "Webhook",
    "WorkersSettings",
    "ensure_secret",
    "ensure_users",
    "ensure_webhook_secrets",
    "load",
    "read_secret",
    "read_users",
    "settings_path",
]
