"""Config parts: what each feature adds to BuildmasterConfig, and the one merge of them.

Each feature module (the core pushes and force form, the records, the push
spool, the matrix, try builds, webhooks, pollers, downloads) returns a
:class:`ConfigPart`: its own workers, builders, schedulers, change sources,
services, configurators and web pieces. No feature writes into or rewrites
another's entries; :func:`merge` is the only place they meet, and it refuses
two parts that claim one name (a builder, scheduler, worker, change source,
service, web plugin, dashboard, change hook dialect, or a top-level or ``www``
key) with a ``ConfigErrors`` line per clash that names both parts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from buildbot.config.errors import ConfigErrors


@dataclass
class ConfigPart:
    """One feature's share of BuildmasterConfig.

    ``feature`` names the part in a clash; ``where`` is what the user edits to
    change its names (default: the feature) and ``fix`` what to do about a
    clash. ``top`` holds top-level keys (``title``, ``db``, ``protocols``, ...);
    ``www`` the keys of ``c['www']`` other than its plugins and change hook
    dialects, which come from ``www_plugins``, ``dashboards`` (the
    ``wsgi_dashboards`` entries) and ``dialects``.
    """

    feature: str
    where: str = ""
    fix: str = ""
    top: dict[str, Any] = field(default_factory=dict)
    workers: list[Any] = field(default_factory=list)
    builders: list[Any] = field(default_factory=list)
    schedulers: list[Any] = field(default_factory=list)
    change_sources: list[Any] = field(default_factory=list)
    services: list[Any] = field(default_factory=list)
    configurators: list[Any] = field(default_factory=list)
    www: dict[str, Any] = field(default_factory=dict)
    www_plugins: dict[str, Any] = field(default_factory=dict)
    dashboards: list[dict[str, Any]] = field(default_factory=list)
    dialects: dict[str, dict[str, Any]] = field(default_factory=dict)


class _Names:
    """Who defined which name of one kind; the clashes found so far."""

    def __init__(self, kind: str, clashes: list[str]) -> None:
        self.kind = kind
        self.owner: dict[str, ConfigPart] = {}
        self.clashes = clashes

    def claim(self, name: Any, part: ConfigPart) -> None:
        first = self.owner.get(str(name))
        if first is None:
            self.owner[str(name)] = part
            return
        where = part.where or part.feature
        by = (f"defined twice by {part.feature}" if first is part
              else f"defined by both {first.feature} and {part.feature}")
        self.clashes.append(f"{where}: {self.kind} {name} already exists; "
                            f"{part.fix or 'rename one of them'} ({by})")


def _items(parts: list[ConfigPart], kind: str, clashes: list[str], entries: str,
           name_of: Callable[[Any], Any]) -> list[Any]:
    """Every part's ``entries`` in part order, each name claimed once."""
    names = _Names(kind, clashes)
    out = []
    for part in parts:
        for entry in getattr(part, entries):
            names.claim(name_of(entry), part)
            out.append(entry)
    return out


def _keys(parts: list[ConfigPart], kind: str, clashes: list[str],
          entries: str) -> dict[str, Any]:
    """Every part's ``entries`` dict merged, each key claimed once."""
    names = _Names(kind, clashes)
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in getattr(part, entries).items():
            names.claim(key, part)
            out.setdefault(key, value)
    return out


def _named(entry: Any) -> Any:
    return entry.name


def merge(parts: Iterable[ConfigPart]) -> dict[str, Any]:
    """The BuildmasterConfig dict of these parts, in their order; clashes are ConfigErrors."""
    parts = list(parts)
    clashes: list[str] = []
    c = _keys(parts, "setting", clashes, "top")
    c["workers"] = _items(parts, "worker", clashes, "workers", _named)
    c["builders"] = _items(parts, "builder", clashes, "builders", _named)
    c["schedulers"] = _items(parts, "scheduler", clashes, "schedulers", _named)
    c["change_source"] = _items(parts, "change source", clashes, "change_sources", _named)
    c["services"] = _items(parts, "service", clashes, "services", _named)
    c["configurators"] = [x for part in parts for x in part.configurators]
    www = _keys(parts, "www setting", clashes, "www")
    plugins = _keys(parts, "www plugin", clashes, "www_plugins")
    dashboards = _items(parts, "dashboard", clashes, "dashboards", lambda d: d["name"])
    if dashboards:
        if "wsgi_dashboards" in plugins:
            clashes.append("www plugin wsgi_dashboards is given as a plugin and as dashboards")
        plugins["wsgi_dashboards"] = dashboards
    for key in ("plugins", "change_hook_dialects"):
        if key in www:
            clashes.append(f"www setting {key} is made by the merge; give it as parts")
    www["plugins"] = plugins
    www["change_hook_dialects"] = _keys(parts, "change hook dialect", clashes, "dialects")
    c["www"] = www
    if clashes:
        raise ConfigErrors(clashes)
    return c


__all__ = ["ConfigPart", "merge"]
