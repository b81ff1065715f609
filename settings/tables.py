"""The service tables of the settings file: master, web, hook, databases, paths,
workers, repos and janitor.

Each function reads one table through a :class:`~settings.reader.TableReader`
and returns its dataclass of :mod:`settings.model`; relative paths become
absolute against the checkout ``root``. The feature tables (matrix, try,
external, artifacts) are read by :mod:`settings.features`.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from ktstr_steps.cache import cache_root
from ktstr_steps.cpulist import parse_cpulist
from ktstr_steps.errors import KtstrError
from settings.model import (
    Alerts,
    Databases,
    HookSettings,
    Janitor,
    KconfigSettings,
    ListedWorker,
    MasterSettings,
    Paths,
    Profile,
    Repo,
    WebSettings,
    WorkersSettings,
)
from settings.reader import TableReader, abspath, file_error, is_remote


def default_kernel_cache(p: TableReader) -> Path:
    """Where ktstr looks for its kernel cache (ktstr's own rule), so CI stores where ktstr reads."""
    try:
        return cache_root()
    except KtstrError as exc:
        raise p.err("kernel_cache", f"is empty and ktstr's default cannot be resolved: {exc}") from None


def short_hostname() -> str:
    """This host's short name, reduced to the characters a worker name may hold."""
    name = socket.gethostname().split(".")[0]
    name = re.sub(r"[^A-Za-z0-9-]", "-", name).strip("-")
    return name or "localhost"


def master_table(m: TableReader, root: Path) -> MasterSettings:
    host = m.str("host") or short_hostname()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", host):
        raise m.err("host", f"must be letters, digits and '-', not {host!r}")
    return MasterSettings(
        title=m.str("title"),
        host=host,
        basedir=abspath(root, m.str("basedir")),
        pb_bind=m.str("pb_bind"),
        pb_port=m.int("pb_port", 1, 65535),
    )


def web_table(w: TableReader, root: Path, master: MasterSettings) -> WebSettings:
    url = w.str("url")
    if url and not re.match(r"^https?://", url):
        raise w.err("url", f"must start with http:// or https://, not {url!r}")
    if url and not url.endswith("/"):
        url += "/"
    web = WebSettings(
        bind=w.str("bind"),
        port=w.int("port", 1, 65535),
        url=url,
        anonymous_read=w.bool("anonymous_read"),
        users_file=abspath(root, w.str("users_file")),
        admins=tuple(w.strlist("admins")),
    )
    if web.port == master.pb_port:
        raise w.err("port", f"must differ from master.pb_port ({master.pb_port})")
    return web


def hook_table(h: TableReader, root: Path) -> HookSettings:
    timeout = h.get("timeout", (int, float), "a number of seconds")
    if not 0 < timeout <= 300:
        raise h.err("timeout", f"must be between 0 and 300 seconds, not {timeout}")
    user = h.str("user")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", user):
        raise h.err("user", f"must be letters, digits, '_', '.' or '-', not {user!r}")
    return HookSettings(
        user=user, password_file=abspath(root, h.str("password_file")), timeout=timeout
    )


def databases_table(d: TableReader, root: Path) -> Databases:
    return Databases(buildbot=_db_url(d, root, "buildbot"), records=_db_url(d, root, "records"))


def _db_url(r: TableReader, root: Path, key: str) -> str:
    url = r.str(key)
    if "://" not in url:
        raise r.err(key, f"must be a database URL such as sqlite:///var/x.sqlite, not {url!r}")
    # Relative sqlite paths would otherwise be relative to whatever directory
    # the master or a command happens to run in.
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rest = url[len("sqlite:///") :]
        if rest and not rest.startswith(":memory:"):
            return f"sqlite:///{abspath(root, rest)}"
    return url


def paths_table(p: TableReader, root: Path) -> Paths:
    cache = p.str("kernel_cache")
    return Paths(
        secrets=abspath(root, p.str("secrets")),
        workers=abspath(root, p.str("workers")),
        tree_store=abspath(root, p.str("tree_store")),
        kernel_cache=abspath(root, cache) if cache else default_kernel_cache(p),
        max_trees=p.int("max_trees", 0, 100_000),
        max_gb=p.gib("max_gb"),
    )


def kconfig_table(k: TableReader, root: Path) -> KconfigSettings:
    """The fragment must exist now: a typo would otherwise key every build under a kc<crc>
    ktstr never computes, or fail every build at its lookup."""
    given = k.str("ktstr_fragment")
    if not given:
        return KconfigSettings()
    path = abspath(root, given)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise k.err("ktstr_fragment", f"{path} {what}; point it at the ktstr.kconfig your ktstr "
                    "uses (in ktstr's source tree), or set \"\" for ktstr-ci's own")
    try:
        path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise k.err("ktstr_fragment", f"{path} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise k.err("ktstr_fragment", f"{path} is not UTF-8 text; a kconfig fragment is "
                    "text") from None
    return KconfigSettings(ktstr_fragment=path)


def workers_table(wk: TableReader) -> WorkersSettings:
    mode = wk.str("mode")
    if mode not in ("auto", "list"):
        raise wk.err("mode", f"must be \"auto\" or \"list\", not {mode!r}")
    listed = _listed_workers(wk)
    if mode == "list" and not listed:
        raise wk.err("list", 'must name at least one worker when workers.mode = "list"')
    return WorkersSettings(mode=mode, keepalive=wk.int("keepalive", 5, 3600), listed=listed)


def _listed_workers(wk: TableReader) -> tuple[ListedWorker, ...]:
    out = []
    names: set[str] = set()
    for r in wk.tables("list"):
        r.check_keys(("name", "host", "llc_index", "cpus"))
        name = r.name("name", names)
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


def repos_array(top: TableReader, root: Path, profiles: dict[str, Profile]) -> tuple[Repo, ...]:
    """``[[repos]]``: ``top`` reads the whole file (the array is at its top level)."""
    items = top.table.get("repos")
    if not isinstance(items, list) or not items:
        raise file_error(top.path, "[[repos]] must list at least one repository")
    out = []
    names: set[str] = set()
    for r in top.tables("repos"):
        r.check_keys(("name", "url", "hosted", "branches", "profiles"))
        name = r.name("name", names)
        url = r.str("url")
        if not url:
            raise r.err("url", "must not be empty")
        path = None if is_remote(url) else abspath(root, url)
        hosted = r.bool("hosted") if r.has("hosted") else False
        if hosted and path is None:
            raise r.err("hosted", f"can only be true for a local path, not the URL {url!r}")
        branches = r.strlist("branches") if r.has("branches") else [".*"]
        if not branches:
            raise r.err("branches", "must list at least one pattern (\".*\" builds every branch)")
        r.patterns("branches", branches)
        profs = r.strlist("profiles") if r.has("profiles") else ["tiny"]
        out.append(
            Repo(
                name=name,
                url=str(path) if path is not None else url,
                hosted=hosted,
                branches=tuple(branches),
                profiles=r.profiles("profiles", profs, profiles),
                path=path,
            )
        )
    return tuple(out)


def janitor_table(j: TableReader) -> Janitor:
    return Janitor(
        log_days=j.int("log_days", 1, 36500),
        build_data_days=j.int("build_data_days", 1, 36500),
        hour=j.int("hour", 0, 23),
    )


def _percent(a: TableReader, key: str) -> float:
    value = a.get(key, (int, float), "a percentage (0 turns the alert off)")
    if not 0 <= value <= 10000:
        raise a.err(key, f"must be a percentage from 0 to 10000 (0 turns the alert off), not {value}")
    return float(value)


def alerts_table(a: TableReader) -> Alerts:
    a.check_keys(("new_warnings", "bzimage_growth_pct", "make_time_growth_pct",
                  "make_time_min_seconds"))
    floor = a.get("make_time_min_seconds", (int, float), "a number of seconds")
    if not 0 <= floor <= 86400:
        raise a.err("make_time_min_seconds",
                    f"must be a number of seconds from 0 to 86400, not {floor}")
    return Alerts(
        new_warnings=a.bool("new_warnings"),
        bzimage_growth_pct=_percent(a, "bzimage_growth_pct"),
        make_time_growth_pct=_percent(a, "make_time_growth_pct"),
        make_time_min_seconds=float(floor),
    )
