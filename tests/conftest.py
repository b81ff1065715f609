"""Shared test setup: every test gets its own kernel cache and run directory.

ktstr's environment variables are removed so a developer's shell cannot change
what a test sees; tests that want one set it with ``monkeypatch``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from tests.support.paths import VENV_BIN

# buildbot.util.ssl star-imports twisted.internet.ssl, whose deprecated
# ProtocolNegotiationSupport warns once per process. Importing buildbot.test (any
# step test) turns warnings into errors for the rest of the session, so whichever
# module imported buildbot.util.ssl after it would fail to collect: import it now.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import buildbot.util.ssl  # noqa: F401

# The fixtures of tests/support, for every test module without per-module imports.
pytest_plugins = [
    "tests.support.kernelorg",
    "tests.support.pg",
    "tests.support.netns",
    "tests.support.servicekit",
    "tests.support.holderkit",
    "tests.support.lockkit",
]

# This venv's console scripts (ktstr-ci, buildbot, buildbot-worker) first on PATH
# for every subprocess, including those of module- and session-scoped fixtures.
if not os.environ.get("PATH", "").startswith(str(VENV_BIN)):
    os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"

_SCRUB = (
    "KTSTR_CACHE_DIR",
    "KTSTR_CPU_CAP",
    "KTSTR_BYPASS_LLC_LOCKS",
    "KTSTR_SYSFS_ROOT",
    "KTSTR_CI_RUN_DIR",
    "KTSTR_CI_RELEASES_URL",
    "KTSTR_CI_KERNEL_MIRROR",
    "XDG_CACHE_HOME",
    "KTSTR_CI_ALLOWED_CPUS",
    "KTSTR_CI_RC_MIRROR",
    "KTSTR_CI_SETTINGS",
    "KTSTR_CI_KTSTR_KCONFIG",
)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in _SCRUB:
        monkeypatch.delenv(name, raising=False)
    cache = tmp_path / "kcache"
    monkeypatch.setenv("KTSTR_CACHE_DIR", str(cache))
    monkeypatch.setenv("KTSTR_CI_RUN_DIR", str(tmp_path / "run"))
    return cache
