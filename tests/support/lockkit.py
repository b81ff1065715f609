"""Other processes that hold flocks: a script that takes a lock, says ``held`` and waits."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

Spawn = Callable[..., subprocess.Popen]


@pytest.fixture
def lock_holding_processes() -> Iterator[Spawn]:
    """``spawn(script, *args)``: run ``python -c script args…`` until it prints ``held``.

    Every process spawned is killed (and reaped) when the test ends.
    """
    procs: list[subprocess.Popen] = []

    def spawn(script: str, *args: object) -> subprocess.Popen:
        p = subprocess.Popen(
            [sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, text=True
        )
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        procs.append(p)
        return p

    yield spawn
    for p in procs:
        p.kill()
        p.wait()
