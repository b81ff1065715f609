"""The ktstr-ci settings: one TOML file, loaded into dataclasses and validated.

Which file: ``$KTSTR_CI_SETTINGS`` if set, else ``<checkout>/var/settings.toml``
if it exists, else the commented default ``master/settings.default.toml``. A
user file only needs the keys it changes: it is merged over the default
(tables merge key by key, arrays replace). Every error names the file and the
key (``web.port``, ``repos[0].profiles``) and says what is accepted.

This module imports no Buildbot code: the git hooks, ``workers/`` and the
``ktstr-ci`` command use it too. It also owns the generated secrets (worker,
hook and web passwords) because they are part of what the settings point at.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets as _secrets
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The one branch-name rule (re-exported: master modules import it from here).
from ktstr_steps.refnames import is_safe_branch

# The checkout: master.cfg, kconfig/ and var/ live here.
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILE = Path(__file__).resolve().parent / "settings.default.toml"
ENV_VAR = "KTSTR_CI_SETTINGS"

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class SettingsError(ValueError):
    """A settings file problem; the message names the file and the key."""


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
    profiles: dict[str, Profile] = field(default_factory=dict)
    janitor: Janitor = Janitor(60, 180, 3)
    # Raw tables of the feature modules (matrix, try, external, artifacts); each
    # module validates its own table (see EXTENSION_SECTIONS).
    extensions: dict[str, dict] = field(default_factory=dict)

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


# Settings tables owned by feature modules of master/: each module parses and
# validates its own table, so adding a feature does not grow this file.
EXTENSION_SECTIONS = ("matrix", "try", "external", "artifacts")


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
    """Load and validate the settings; raises :class:`SettingsError` with the key at fault."""
    default = _read_toml(DEFAULT_FILE)
    src = Path(path).resolve() if path is not None else settings_path(root)
    data = copy.deepcopy(default)
    if src != DEFAULT_FILE:
        if not src.is_file():
            raise SettingsError(
                f"settings file {src} does not exist (from ${ENV_VAR} or the argument); "
                f"copy {DEFAULT_FILE} there or unset {ENV_VAR}"
            )
        _merge(data, _read_toml(src), default, src, "")
    return _build(data, src, root)


# -- parsing ---------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"settings file {path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"settings file {path}: cannot read: {exc.strerror}") from None


def _merge(dst: dict, src: dict, schema: dict, path: Path, prefix: str) -> None:
    """Merge ``src`` over ``dst``; unknown keys are errors so typos do not pass silently."""
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if key not in schema and not (prefix == "workers." and key == "list"):
            known = ", ".join(sorted(schema)) or "(none)"
            raise SettingsError(
                f"settings file {path}: unknown key {dotted!r}; known keys here: {known}"
            )
        if isinstance(schema.get(key), dict):
            if not isinstance(value, dict):
                raise SettingsError(f"settings file {path}: {dotted} must be a table")
            _merge(dst.setdefault(key, {}), value, schema[key], path, dotted + ".")
        else:
            dst[key] = value


class _Reader:
    """Typed access to one table with errors that name file and key."""

    def __init__(self, path: Path, table: dict, prefix: str) -> None:
        self.path, self.table, self.prefix = path, table, prefix

    def err(self, key: str, what: str) -> SettingsError:
        return SettingsError(f"settings file {self.path}: {self.prefix}{key} {what}")

    def get(self, key: str, typ: type | tuple[type, ...], what: str) -> Any:
        if key not in self.table:
            raise self.err(key, f"is missing; it must be {what}")
        value = self.table[key]
        # bool is an int subclass; a port of `true` is a mistake, not 1.
        if isinstance(value, bool) and typ is not bool and bool not in _as_tuple(typ):
            raise self.err(key, f"must be {what}, not {value!r}")
        if not isinstance(value, typ):
            raise self.err(key, f"must be {what}, not {value!r}")
        return value

    def str(self, key: str) -> str:
        return self.get(key, str, "a string")

    def int(self, key: str, lo: int, hi: int) -> int:
        value = self.get(key, int, f"an integer from {lo} to {hi}")
        if not lo <= value <= hi:
            raise self.err(key, f"must be an integer from {lo} to {hi}, not {value}")
        return value

    def bool(self, key: str) -> bool:
        return self.get(key, bool, "true or false")

    def strlist(self, key: str) -> list[str]:
        value = self.get(key, list, "a list of strings")
        if not all(isinstance(v, str) for v in value):
            raise self.err(key, f"must be a list of strings, not {value!r}")
        return value


def _as_tuple(typ: type | tuple[type, ...]) -> tuple[type, ...]:
    return typ if isinstance(typ, tuple) else (typ,)


def _abspath(root: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else (root / p)


def _db_url(root: Path, r: _Reader, key: str) -> str:
    url = r.str(key)
    if "://" not in url:
        raise r.err(key, f"must be a database URL such as sqlite:///var/x.sqlite, not {url!r}")
    # Relative sqlite paths would otherwise be relative to whatever directory
    # the master or a command happens to run in.
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rest = url[len("sqlite:///") :]
        if rest and not rest.startswith(":memory:"):
            return f"sqlite:///{_abspath(root, rest)}"
    return url


def default_kernel_cache() -> Path:
    """Where ktstr looks for its kernel cache, so CI stores where ktstr reads."""
    env = os.environ.get("KTSTR_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "ktstr" / "kernels"


def short_hostname() -> str:
    """This host's short name, reduced to the characters a worker name may hold."""
    name = socket.gethostname().split(".")[0]
    name = re.sub(r"[^A-Za-z0-9-]", "-", name).strip("-")
    return name or "localhost"


def load_profiles() -> dict[str, Profile]:
    """The config profiles of ``kconfig/profiles.toml``.

    Uses ``ktstr_steps.kconfig.load_profile`` to validate each profile when the
    pipeline module provides it (it knows the fragment rules); the names come
    from the TOML either way.
    """
    from ktstr_steps.paths import kconfig_dir

    path = kconfig_dir() / "profiles.toml"
    data = _read_toml(path)
    table = data.get("profiles")
    if not isinstance(table, dict) or not table:
        raise SettingsError(f"profiles file {path}: no [profiles.NAME] tables")
    try:
        from ktstr_steps.kconfig import load_profile  # type: ignore[attr-defined]
    except ImportError:
        load_profile = None
    out: dict[str, Profile] = {}
    for name, prof in table.items():
        if not isinstance(prof, dict):
            raise SettingsError(f"profiles file {path}: profiles.{name} must be a table")
        if not NAME_RE.match(name):
            raise SettingsError(
                f"profiles file {path}: profile name {name!r} must be letters, digits, - and _"
            )
        extra = prof.get("extra", [])
        if not isinstance(extra, list) or not all(isinstance(e, str) for e in extra):
            raise SettingsError(f"profiles file {path}: profiles.{name}.extra must be a list")
        if load_profile is not None:
            try:
                load_profile(name)
            except TypeError:
                pass  # a different signature: the pipeline validates at build time
            except Exception as exc:  # the pipeline's own message says what is wrong
                raise SettingsError(f"profiles file {path}: profile {name!r}: {exc}") from None
        out[name] = Profile(
            name=name,
            description=str(prof.get("description", "")),
            base=str(prof.get("base", "defconfig")),
            extra=tuple(extra),
        )
    return out


def _build(data: dict, src: Path, root: Path) -> Settings:
    def table(key: str) -> _Reader:
        t = data.get(key)
        if not isinstance(t, dict):
            raise SettingsError(f"settings file {src}: [{key}] must be a table")
        return _Reader(src, t, f"{key}.")

    m = table("master")
    host = m.str("host") or short_hostname()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", host):
        raise m.err("host", f"must be letters, digits and '-', not {host!r}")
    master = MasterSettings(
        title=m.str("title"),
        host=host,
        basedir=_abspath(root, m.str("basedir")),
        pb_bind=m.str("pb_bind"),
        pb_port=m.int("pb_port", 1, 65535),
    )

    w = table("web")
    url = w.str("url")
    if url and not re.match(r"^https?://", url):
        raise w.err("url", f"must start with http:// or https://, not {url!r}")
    if url and not url.endswith("/"):
        url += "/"
    admins = w.strlist("admins")
    web = WebSettings(
        bind=w.str("bind"),
        port=w.int("port", 1, 65535),
        url=url,
        anonymous_read=w.bool("anonymous_read"),
        users_file=_abspath(root, w.str("users_file")),
        admins=tuple(admins),
    )
    if web.port == master.pb_port:
        raise w.err("port", f"must differ from master.pb_port ({master.pb_port})")

    h = table("hook")
    timeout = h.get("timeout", (int, float), "a number of seconds")
    if not 0 < timeout <= 300:
        raise h.err("timeout", f"must be between 0 and 300 seconds, not {timeout}")
    hook_user = h.str("user")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", hook_user):
        raise h.err("user", f"must be letters, digits, '_', '.' or '-', not {hook_user!r}")
    hook = HookSettings(
        user=hook_user, password_file=_abspath(root, h.str("password_file")), timeout=timeout
    )

    d = table("databases")
    databases = Databases(buildbot=_db_url(root, d, "buildbot"), records=_db_url(root, d, "records"))

    p = table("paths")
    cache = p.str("kernel_cache")
    paths = Paths(
        secrets=_abspath(root, p.str("secrets")),
        workers=_abspath(root, p.str("workers")),
        tree_store=_abspath(root, p.str("tree_store")),
        kernel_cache=_abspath(root, cache) if cache else default_kernel_cache(),
    )

    wk = table("workers")
    mode = wk.str("mode")
    if mode not in ("auto", "list"):
        raise wk.err("mode", f"must be \"auto\" or \"list\", not {mode!r}")
    listed = _listed_workers(src, wk.table.get("list", []))
    if mode == "list" and not listed:
        raise wk.err("list", 'must name at least one worker when workers.mode = "list"')
    workers = WorkersSettings(mode=mode, keepalive=wk.int("keepalive", 5, 3600), listed=listed)

    profiles = load_profiles()
    repos = _repos(src, root, data.get("repos"), profiles)

    j = table("janitor")
    janitor = Janitor(
        log_days=j.int("log_days", 1, 36500),
        build_data_days=j.int("build_data_days", 1, 36500),
        hour=j.int("hour", 0, 23),
    )
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
        extensions={k: copy.deepcopy(data.get(k) or {}) for k in EXTENSION_SECTIONS},
    )


def _listed_workers(src: Path, items: Any) -> tuple[ListedWorker, ...]:
    from ktstr_steps.cpulist import parse_cpulist

    if not isinstance(items, list):
        raise SettingsError(f"settings file {src}: workers.list must be an array of tables")
    out = []
    names = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise SettingsError(f"settings file {src}: workers.list[{i}] must be a table")
        r = _Reader(src, item, f"workers.list[{i}].")
        unknown = set(item) - {"name", "host", "llc_index", "cpus"}
        if unknown:
            raise r.err(sorted(unknown)[0], "is not a known key (name, host, llc_index, cpus)")
        name = r.str("name")
        if not NAME_RE.match(name):
            raise r.err("name", f"must be letters, digits, '-' and '_', not {name!r}")
        if name in names:
            raise r.err("name", f"{name!r} is used twice")
        names.add(name)
        try:
            cpus = parse_cpulist(r.str("cpus"))
        except ValueError as exc:
            raise r.err("cpus", f"is not a CPU list like 0-3,8: {exc}") from None
        if not cpus:
            raise r.err("cpus", "must list at least one CPU")
        out.append(
            ListedWorker(
                name=name, host=r.str("host"), llc_index=r.int("llc_index", 0, 4095),
                cpus=tuple(cpus),
            )
        )
    return tuple(out)


def _repos(src: Path, root: Path, items: Any, profiles: dict[str, Profile]) -> tuple[Repo, ...]:
    if not isinstance(items, list) or not items:
        raise SettingsError(f"settings file {src}: [[repos]] must list at least one repository")
    out = []
    names = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise SettingsError(f"settings file {src}: repos[{i}] must be a table")
        r = _Reader(src, item, f"repos[{i}].")
        unknown = set(item) - {"name", "url", "hosted", "branches", "profiles"}
        if unknown:
            raise r.err(
                sorted(unknown)[0], "is not a known key (name, url, hosted, branches, profiles)"
            )
        name = r.str("name")
        if not NAME_RE.match(name):
            raise r.err("name", f"must be letters, digits, '-' and '_', not {name!r}")
        if name in names:
            raise r.err("name", f"{name!r} is used twice")
        names.add(name)
        url = r.str("url")
        if not url:
            raise r.err("url", "must not be empty")
        is_remote = "://" in url or re.match(r"^[\w.-]+@[\w.-]+:", url)
        path = None if is_remote else _abspath(root, url)
        hosted = bool(item.get("hosted", False))
        if "hosted" in item:
            hosted = r.bool("hosted")
        if hosted and path is None:
            raise r.err("hosted", f"can only be true for a local path, not the URL {url!r}")
        branches = r.strlist("branches") if "branches" in item else [".*"]
        if not branches:
            raise r.err("branches", "must list at least one pattern (\".*\" builds every branch)")
        for pat in branches:
            try:
                re.compile(pat)
            except re.error as exc:
                raise r.err("branches", f"has an invalid regular expression {pat!r}: {exc}") from None
        profs = r.strlist("profiles") if "profiles" in item else ["tiny"]
        for prof in profs:
            if prof not in profiles:
                raise r.err(
                    "profiles",
                    f"names the unknown profile {prof!r}; known profiles "
                    f"(kconfig/profiles.toml): {', '.join(sorted(profiles))}",
                )
        out.append(
            Repo(
                name=name,
                url=str(path) if path is not None else url,
                hosted=hosted,
                branches=tuple(branches),
                profiles=tuple(profs),
                path=path,
            )
        )
    return tuple(out)


# -- secrets -----------------------------------------------------------------


def read_secret(path: Path) -> str | None:
    """The secret in ``path`` (stripped), or None when the file does not exist yet."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def ensure_secret(path: Path) -> str:
    """Return the secret in ``path``, generating a random one (mode 0600) if absent."""
    existing = read_secret(path)
    if existing:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = _secrets.token_urlsafe(24)
    _write_private(path, value + "\n")
    return value


def read_users(path: Path) -> dict[str, str]:
    """Web users ``{name: password}`` from the JSON users file; {} when it does not exist."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SettingsError(f"web users file {path}: not a JSON object of user: password ({exc})") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in data.items()
    ):
        raise SettingsError(f"web users file {path}: must be a JSON object {{\"user\": \"password\"}}")
    return data


def ensure_users(path: Path, admins: tuple[str, ...]) -> dict[str, str]:
    """Make sure every admin has a password in the users file (generated when missing)."""
    users = read_users(path)
    changed = False
    for name in admins:
        if name not in users:
            users[name] = _secrets.token_urlsafe(12)
            changed = True
    if changed or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(path, json.dumps(users, indent=2) + "\n")
    return users


def _write_private(path: Path, text: str) -> None:
    # Created 0600 from the start (no window where another user can read it),
    # then renamed into place so a reader never sees half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
