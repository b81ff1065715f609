"""The generated secrets the settings point at: worker, hook and web passwords,
the try and web users files, the webhook secrets.

Secrets never live in the settings file. They are files under
``paths.secrets`` (mode 0600 in a 0700 directory), generated the first time
they are needed and read from there by the master, the workers and the hooks.
"""

from __future__ import annotations

import json
import os
import secrets as _random
from pathlib import Path

from settings.model import Settings
from settings.reader import SettingsError


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
    value = _random.token_urlsafe(24)
    _write_private(path, value + "\n")
    return value


def ensure_webhook_secrets(settings: Settings) -> list[Path]:
    """Generate every ``[[external.webhooks]]`` secret file that does not exist yet."""
    for hook in settings.external.webhooks:
        ensure_secret(hook.secret_file)
    return [h.secret_file for h in settings.external.webhooks]


def read_users(path: Path) -> dict[str, str]:
    """Users ``{name: password}`` from a JSON users file; {} when it does not exist."""
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
    """Make sure every name in ``admins`` has a password in the users file (generated when missing)."""
    users = read_users(path)
    changed = False
    for name in admins:
        if name not in users:
            users[name] = _random.token_urlsafe(12)
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
