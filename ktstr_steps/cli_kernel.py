"""``kernel build|list|clean`` and the per-phase ``phase`` subcommands the Buildbot steps call."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    pass
