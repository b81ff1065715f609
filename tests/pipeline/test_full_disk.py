"""A full cache filesystem, for real: a tiny tmpfs as KTSTR_CACHE_DIR, filled to the brim.

The build itself succeeds; the store fails with a clear warning, leaves no
partial entry and no temporary directory behind, and once there is room
again the next build stores normally.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.fakekernel import make_fake_kernel

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_fs(tmp_path: Path):
    mnt = tmp_path / "cachefs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def build(tree: Path, cache: Path) -> tuple[int, dict, str]:
    env = {**os.environ, "KTSTR_CACHE_DIR": str(cache)}
    p = subprocess.run(["ktstr-ci", "kernel", "build", "--source", str(tree), "--json"],
                       env=env, capture_output=True, text=True, timeout=300)
    return p.returncode, json.loads(p.stdout), p.stderr


def entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))


def test_full_cache_filesystem_warns_keeps_nothing_and_recovers(tmp_path: Path, small_fs: Path):
    tree = make_fake_kernel(tmp_path / "linux")
    cache = small_fs / "kernels"
    cache.mkdir()
    filler = small_fs / "filler"
    free = os.statvfs(small_fs)
    # Leave room for lock files and directories, not for a kernel image.
    with open(filler, "wb") as f:
        f.write(b"\0" * (free.f_bavail * free.f_frsize - 16 * 1024))

    rc, res, err = build(tree, cache)
    assert rc == 0, err  # the kernel built; only caching it failed
    assert res["outcome"] == "store-failed"
    assert "No space left on device" in err and "warning" in err
    assert entries(cache) == [], "a partial cache entry was left behind"
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name], "a temporary store dir was left"

    filler.unlink()
    rc, res, err = build(tree, cache)
    assert rc == 0 and res["outcome"] == "cached", err
    assert entries(cache) == [res["cache_key"]]
    assert (cache / res["cache_key"] / "metadata.json").is_file()
