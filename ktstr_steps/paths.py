"""Where ktstr-ci's own files are: the repository root and the kconfig directory."""

from __future__ import annotations

import os
from pathlib import Path

# Repository root (editable install): kconfig/ lives here. Overridable so an
# installed copy on a worker host can point at its own kconfig directory.
REPO_ROOT = Path(__file__).resolve().parent.parent


def kconfig_dir() -> Path:
    """``$KTSTR_CI_KCONFIG_DIR``, else the repository's ``kconfig/`` (ktstr.kconfig, profiles)."""
    return Path(os.environ.get("KTSTR_CI_KCONFIG_DIR") or REPO_ROOT / "kconfig")


# The ktstr.kconfig of the user's ktstr ([kconfig] ktstr_fragment): its bytes are the
# baked fragment and set the kc<crc> of every key, so ktstr finds CI's kernels.
KTSTR_KCONFIG_ENV = "KTSTR_CI_KTSTR_KCONFIG"


def ktstr_kconfig_path() -> Path:
    """``$KTSTR_CI_KTSTR_KCONFIG``, else ``ktstr.kconfig`` of :func:`kconfig_dir`."""
    given = os.environ.get(KTSTR_KCONFIG_ENV)
    return Path(given) if given else kconfig_dir() / "ktstr.kconfig"
