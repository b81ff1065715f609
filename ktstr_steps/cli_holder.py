"""``ktstr-ci holder ...``: the reservation holder (filled in by the host-resources work)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    pass
