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
