"""The config profiles of ``kconfig/profiles.toml``, as the settings know them.

The settings name profiles (``repos[0].profiles``, ``matrix.profiles``, ...);
this module reads which exist. Each profile is also loaded once with the
pipeline's own :func:`ktstr_steps.kconfig.load_profile`, which knows the
fragment rules, so a broken profile is a settings error at start rather than
a failed build later.
"""

from __future__ import annotations

from ktstr_steps.errors import KtstrError
from ktstr_steps.kconfig import load_profile
from ktstr_steps.paths import kconfig_dir
from settings.model import Profile
from settings.reader import NAME_RE, SettingsError, read_toml


def load_profiles() -> dict[str, Profile]:
    """The profiles of ``kconfig/profiles.toml`` by name; :class:`SettingsError` names the profile."""
    path = kconfig_dir() / "profiles.toml"
    data = read_toml(path)
    table = data.get("profiles")
    if not isinstance(table, dict) or not table:
        raise SettingsError(f"profiles file {path}: no [profiles.NAME] tables")
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
        try:
            load_profile(name)
        except KtstrError as exc:  # the pipeline's own message says what is wrong
            raise SettingsError(f"profiles file {path}: profile {name!r}: {exc}") from None
        out[name] = Profile(
            name=name,
            description=str(prof.get("description", "")),
            base=str(prof.get("base", "defconfig")),
            extra=tuple(extra),
        )
    return out
