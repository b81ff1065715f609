"""Running the ktstr-ci and buildbot commands as a user would."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import settings
from tests.support.paths import REPO, VENV_BIN


def ktstr(*args: str, env: dict | None = None, timeout: float = 300) -> tuple[int, dict, str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    p = subprocess.run(
        ["ktstr-ci", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    obj = json.loads(p.stdout) if "--json" in args and p.stdout.strip() else {}
    return p.returncode, obj, p.stderr


def run_checkconfig(settings_file: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``buildbot checkconfig`` of the repository's master.cfg with ``settings_file``."""
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", settings.ENV_VAR: str(settings_file),
           "HOME": str(cwd)}
    return subprocess.run(
        [str(VENV_BIN / "buildbot"), "checkconfig", str(REPO / "master.cfg")],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )
