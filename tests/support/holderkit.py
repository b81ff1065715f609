"""The holder's tests' kit: a lock directory, a stand-in worker as the holder's owner, the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    d = tmp_path / "locks"
    d.mkdir()
    return d


@pytest.fixture
def owner():
    """A stand-in for the buildbot-worker: the holder's owner."""
    p = subprocess.Popen(["sleep", "600"])
    yield p
    p.kill()
    p.wait()


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["ktstr-ci", *args], capture_output=True, text=True, timeout=timeout)


def acquire(name: str, lock_dir: Path, *extra: str) -> dict:
    r = cli("holder", "acquire", "--name", name, "--lock-dir", str(lock_dir), "--json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)
