"""Running the ktstr-ci command as a user would, JSON on stdout."""

from __future__ import annotations

import json
import os
import subprocess


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
