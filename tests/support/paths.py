"""Where the repository and this venv's console scripts are."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PAYLOADS = Path(__file__).resolve().parent / "payloads"
