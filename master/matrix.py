"""The nightly kernel matrix: versions x profiles, fanned out per cell."""

from __future__ import annotations

from typing import Any


def configure(c: dict[str, Any], settings: Any, specs: list[Any]) -> None:
    """Add this feature's pieces to the BuildmasterConfig dict ``c`` (settings.extensions["..."])."""
