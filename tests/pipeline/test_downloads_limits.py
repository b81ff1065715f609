"""Bounded download cache and release trees: least recently used go, one in use never.

Unit level on real files and flocks, then the real ``ktstr-ci phase lookup
--version`` against the loopback kernel.org with limits, as a matrix cell runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ktstr_steps.flock import FileLock
from ktstr_steps.kernelorg import download_limits
from ktstr_steps.kernelorg.download_limits import GIB, lock_path, prune_downloads, tarball_in_use
from tests.support.kernelorg import KernelOrg

MIB = 1024**2


def tarball(cache: Path, version: str, used: float, mib: int = 1) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"linux-{version}.tar.xz"
    path.write_bytes(os.urandom(mib * MIB))
    os.utime(path, (used, used))
    return path


def left(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("linux-"))


def test_max_files_removes_least_recently_used_never_a_locked_one(tmp_path: Path, capfd) -> None:
    cache = tmp_path / "dl"
    oldest = tarball(cache, "6.1.1", 100)
    tarball(cache, "6.1.2", 200)
    tarball(cache, "6.1.3", 300)
    newest = tarball(cache, "6.1.4", 400)
    downloading = FileLock.try_acquire(lock_path(oldest), exclusive=True)
    try:
        removed = prune_downloads(cache, max_files=2)
    finally:
        downloading.release()
    assert [r["name"] for r in removed] == ["linux-6.1.2.tar.xz", "linux-6.1.3.tar.xz"]
    assert left(cache) == [oldest.name, newest.name]
    assert "removed linux-6.1.2.tar.xz from the download cache" in capfd.readouterr().err
    assert [r["name"] for r in download_limits.removals(cache)] == [
        "linux-6.1.2.tar.xz", "linux-6.1.3.tar.xz"]


def test_max_gb_and_the_kept_tarball(tmp_path: Path) -> None:
    cache = tmp_path / "dl"
    kept = tarball(cache, "6.6.1", 100, mib=3)
    tarball(cache, "6.6.2", 200, mib=3)
    tarball(cache, "6.6.3", 300, mib=3)
    removed = prune_downloads(cache, max_gb=7 * MIB / GIB, keep=(kept,))
    assert [r["name"] for r in removed] == ["linux-6.6.2.tar.xz"]
    assert left(cache) == ["linux-6.6.1.tar.xz", "linux-6.6.3.tar.xz"]


def test_extracting_holds_the_tarball(tmp_path: Path) -> None:
    cache = tmp_path / "dl"
    old = tarball(cache, "6.12.1", 100)
    tarball(cache, "6.12.2", 200)
    with tarball_in_use(old):
        # The least recently used one is being extracted from: the next one goes.
        assert [r["name"] for r in prune_downloads(cache, max_files=1)] == ["linux-6.12.2.tar.xz"]
    assert left(cache) == [old.name]


def lookup(state: Path, version: str, dl: Path, trees: Path, *extra: str) -> tuple[int, dict, str]:
    p = subprocess.run(
        ["ktstr-ci", "phase", "lookup", "--state", str(state), "--version", version,
         "--profile", "tiny", "--download-cache", str(dl), "--tree-store", str(trees),
         *extra, "--json"],
        capture_output=True, text=True, env=dict(os.environ), timeout=300,
        stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    return p.returncode, json.loads(p.stdout), p.stderr


def test_lookup_misses_prune_release_trees_and_tarballs(kernel_org: KernelOrg,
                                                       tmp_path: Path) -> None:
    dl, trees = tmp_path / "dl", tmp_path / "trees"
    versions = ("6.15.1", "6.15.2", "6.15.3")
    for v in versions:
        kernel_org.add_fake_kernel(v)
    limits = ("--tree-max-trees", "2", "--download-max-files", "1")
    answers = []
    for i, v in enumerate(versions):
        rc, out, err = lookup(tmp_path / f"s{i}.json", v, dl, trees, *limits)
        assert rc == 0, err
        answers.append((out, err))
        # The extraction sets "last built" to now; a second's resolution is not enough here.
        os.utime(out["source_dir"], (1000 + i, 1000 + i))
    last, err = answers[-1]
    assert left(dl) == ["linux-6.15.3.tar.xz"]
    released = sorted(p.name for p in (trees / "tarballs").iterdir() if not p.name.startswith("."))
    assert len(released) == 2 and Path(last["source_dir"]).name in released
    assert not any("6.15.1" in name for name in released)
    names = [r.get("name") or Path(r["path"]).name for r in last["removed"]]
    assert "linux-6.15.2.tar.xz" in names and any("6.15.1" in n for n in names)
    assert "removed tree trees/tarballs/6.15.1" in err, [r["path"] for r in last["removed"]]
    listed = subprocess.run(["ktstr-ci", "trees", "--store", str(trees), "--downloads", str(dl),
                             "--json"], capture_output=True, text=True, check=True)
    shown = json.loads(listed.stdout)
    assert [t["name"] for t in shown["downloads"]["tarballs"]] == ["linux-6.15.3.tar.xz"]
    assert {r["name"] for r in shown["downloads"]["removed"]} == {
        "linux-6.15.1.tar.xz", "linux-6.15.2.tar.xz"}
    assert len([t for t in shown["trees"] if t["kind"] == "release"]) == 2
