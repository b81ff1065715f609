"""Which settings file is read, how it is merged over the default, and building
:class:`~settings.model.Settings` from it.

Which file: ``$KTSTR_CI_SETTINGS`` if set, else ``<checkout>/var/settings.toml``
if it exists, else the commented default ``settings/default.toml``. A user
file only needs the keys it changes: it is merged over the default (tables
merge key by key, arrays replace), and a key the default does not have is an
error, so a typo does not pass silently.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from settings import features, tables
from settings.model import Settings
from settings.profiles import load_profiles
from settings.reader import SettingsError, TableReader, file_error, read_toml

# The checkout: master.cfg, kconfig/ and var/ live here.
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILE = Path(__file__).resolve().parent / "default.toml"
ENV_VAR = "KTSTR_CI_SETTINGS"


def settings_path(root: Path = REPO_ROOT) -> Path:
    """The settings file that :func:`load` reads (see the module docstring)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    local = root / "var" / "settings.toml"
    if local.is_file():
        return local
    return DEFAULT_FILE


def load(path: Path | str | None = None, *, root: Path = REPO_ROOT) -> Settings:
    """Load and validate every table; raises :class:`SettingsError` with the key at fault."""
    default = read_toml(DEFAULT_FILE)
    src = Path(path).resolve() if path is not None else settings_path(root)
    data = copy.deepcopy(default)
    if src != DEFAULT_FILE:
        if not src.is_file():
            raise SettingsError(
                f"settings file {src} does not exist (from ${ENV_VAR} or the argument); "
                f"copy {DEFAULT_FILE} there or unset {ENV_VAR}"
            )
        _merge(data, read_toml(src), default, src, "")
    return _build(data, src, root)


def _merge(dst: dict, src: dict, schema: dict, path: Path, prefix: str) -> None:
    """Merge ``src`` over ``dst``; keys the default (``schema``) lacks are errors."""
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        # workers.list is the one array of tables the default only shows commented out.
        if key not in schema and not (prefix == "workers." and key == "list"):
            known = ", ".join(sorted(schema)) or "(none)"
            raise file_error(path, f"unknown key {dotted!r}; known keys here: {known}")
        if isinstance(schema.get(key), dict):
            if not isinstance(value, dict):
                raise file_error(path, f"{dotted} must be a table")
            _merge(dst.setdefault(key, {}), value, schema[key], path, dotted + ".")
        else:
            dst[key] = value


def _build(data: dict, src: Path, root: Path) -> Settings:
    def table(key: str) -> TableReader:
        return TableReader.top(src, data, key)

    # In the order of the file, so the first mistake in it is the one reported.
    master = tables.master_table(table("master"), root)
    web = tables.web_table(table("web"), root, master)
    hook = tables.hook_table(table("hook"), root)
    databases = tables.databases_table(table("databases"), root)
    paths = tables.paths_table(table("paths"), root)
    workers = tables.workers_table(table("workers"))
    profiles = load_profiles()
    repos = tables.repos_array(TableReader(src, data, ""), root, profiles)
    janitor = tables.janitor_table(table("janitor"))
    return Settings(
        source=src,
        root=root,
        master=master,
        web=web,
        hook=hook,
        databases=databases,
        paths=paths,
        workers=workers,
        repos=repos,
        profiles=profiles,
        janitor=janitor,
        matrix=features.matrix_table(table("matrix"), root, repos, profiles),
        try_=features.try_table(table("try"), root, master=master, web=web, paths=paths,
                                repos=repos, profiles=profiles),
        external=features.external_table(table("external"), root, paths=paths, repos=repos,
                                         profiles=profiles),
        artifacts=features.artifacts_table(table("artifacts"), root, master),
        kconfig=tables.kconfig_table(table("kconfig"), root),
        alerts=tables.alerts_table(table("alerts")),
        notify=features.notify_table(table("notify")),
    )
