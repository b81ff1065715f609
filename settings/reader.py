"""Typed access to one settings table, with errors that name the file and the key.

Every table of the settings file, the service tables and the feature tables
alike, is read through :class:`TableReader`, so every mistake reads the same
way: ``settings file <path>: <key> <what is wrong and what is accepted>``,
where ``<key>`` is the dotted path a user finds in the file (``web.port``,
``repos[0].profiles``, ``external.pollers[1].interval``).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

# Names of repositories, profiles, pollers and listed workers: they become
# builder, scheduler and directory names.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# A git URL (scheme://... or user@host:path); anything else is a local path.
_REMOTE_RE = re.compile(r"^[\w.-]+@[\w.-]+:")


class SettingsError(ValueError):
    """A settings file problem; the message names the file and the key."""


def file_error(path: Path, text: str) -> SettingsError:
    """An error about the settings file ``path`` as a whole (no single key at fault)."""
    return SettingsError(f"settings file {path}: {text}")


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML file; a :class:`SettingsError` when it cannot be read or parsed."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise file_error(path, f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise file_error(path, f"cannot read: {exc.strerror}") from None


def abspath(root: Path, text: str) -> Path:
    """``text`` as a path; relative paths are relative to the checkout ``root``."""
    p = Path(text).expanduser()
    return p if p.is_absolute() else root / p


def is_remote(url: str) -> bool:
    """True for a git URL (``https://...``, ``git@host:path``), False for a local path."""
    return "://" in url or bool(_REMOTE_RE.match(url))


class TableReader:
    """One table (``prefix`` is its dotted key path with the trailing dot) of the file ``path``."""

    def __init__(self, path: Path, table: dict, prefix: str) -> None:
        self.path, self.table, self.prefix = path, table, prefix

    @classmethod
    def top(cls, path: Path, data: dict, key: str) -> TableReader:
        """The top-level table ``[key]`` of the parsed file ``data``."""
        table = data.get(key)
        if not isinstance(table, dict):
            raise file_error(path, f"[{key}] must be a table")
        return cls(path, table, f"{key}.")

    def err(self, key: str, what: str) -> SettingsError:
        return SettingsError(f"settings file {self.path}: {self.prefix}{key} {what}")

    def has(self, key: str) -> bool:
        return key in self.table

    def check_keys(self, known: tuple[str, ...]) -> None:
        """Refuse keys this table does not have, so a typo does not pass silently."""
        unknown = sorted(set(self.table) - set(known))
        if unknown:
            raise self.err(unknown[0], f"is not a known key ({', '.join(known)})")

    def tables(self, key: str) -> list[TableReader]:
        """The array of tables ``[[<prefix><key>]]``, each entry as a reader."""
        items = self.table.get(key, [])
        dotted = f"{self.prefix}{key}"
        if not isinstance(items, list):
            raise file_error(self.path, f"{dotted} must be an array of tables ([[{dotted}]])")
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise file_error(self.path, f"{dotted}[{i}] must be a table")
            out.append(TableReader(self.path, item, f"{dotted}[{i}]."))
        return out

    # -- typed values --------------------------------------------------------

    def get(self, key: str, typ: type | tuple[type, ...], what: str) -> Any:
        if key not in self.table:
            raise self.err(key, f"is missing; it must be {what}")
        value = self.table[key]
        # bool is an int subclass; a port of `true` is a mistake, not 1.
        types = typ if isinstance(typ, tuple) else (typ,)
        if isinstance(value, bool) and bool not in types:
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

    def gib(self, key: str) -> float:
        """A size limit in GiB: a finite number, 0 (no limit) or more."""
        value = self.get(key, (int, float), "a number of GiB (0 = no limit)")
        if not 0 <= value < float("inf"):
            raise self.err(key, f"must be a number of GiB, 0 (no limit) or more, not {value}")
        return float(value)

    def bool(self, key: str) -> bool:
        return self.get(key, bool, "true or false")

    def strlist(self, key: str) -> list[str]:
        value = self.get(key, list, "a list of strings")
        if not all(isinstance(v, str) for v in value):
            raise self.err(key, f"must be a list of strings, not {value!r}")
        return value

    # -- values with a meaning -------------------------------------------------

    def name(self, key: str, taken: set[str]) -> str:
        """A builder-safe name (:data:`NAME_RE`) not in ``taken``; added to ``taken``."""
        name = self.str(key)
        if not NAME_RE.match(name):
            raise self.err(key, f"must be letters, digits, '-' and '_', not {name!r}")
        if name in taken:
            raise self.err(key, f"{name!r} is used twice")
        taken.add(name)
        return name

    def patterns(self, key: str, value: list[str]) -> list[str]:
        """``value`` (read from ``key``), checked to be regular expressions."""
        for pat in value:
            try:
                re.compile(pat)
            except re.error as exc:
                raise self.err(key, f"has an invalid regular expression {pat!r}: {exc}") from None
        return value

    def profiles(self, key: str, value: list[str], known: dict[str, Any], *,
                 each: bool = False) -> tuple[str, ...]:
        """``value`` (read from ``key``), checked to be names of kconfig/profiles.toml.

        ``each`` names the entry at fault (``key[1]``) instead of the list.
        """
        for i, name in enumerate(value):
            if name not in known or not NAME_RE.match(name):
                raise self.err(
                    f"{key}[{i}]" if each else key,
                    f"names the unknown profile {name!r}; known profiles "
                    f"(kconfig/profiles.toml): {', '.join(sorted(known))}",
                )
        return tuple(value)
