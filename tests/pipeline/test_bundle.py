"""``ktstr-ci phase publish``: the worker gathers a built kernel's downloadable files (bundle.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import zlib
from pathlib import Path

import pytest

from ktstr_steps import cache
from ktstr_steps.buildstate import BuildState
from ktstr_steps.cache import KernelMetadata, KernelSource
from tests.support.vmlinux import build_vmlinux

KEY = "local-1a2b3c4-x86_64-kc0123abcd"


def crc(data: bytes) -> str:
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def publish(state: Path, *extra: str) -> tuple[int, dict, str]:
    proc = subprocess.run(["ktstr-ci", "phase", "publish", "--state", str(state), *extra,
                           "--json"], capture_output=True, text=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    t = tmp_path / "tree"
    (t / "arch/x86/boot").mkdir(parents=True)
    (t / "arch/x86/boot/bzImage").write_bytes(b"tree image " * 100)
    build_vmlinux(t / "vmlinux")
    (t / ".config").write_text("CONFIG_SCHED_CLASS_EXT=y\n")
    return t


def state_file(tmp_path: Path, **fields) -> Path:
    path = tmp_path / "work" / "ktstr-state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    base = dict(arch="x86_64", image_name="bzImage", source_meta={"type": "local",
                "source_tree_path": "/t", "git_hash": None}, kconfig_hash="0123abcd")  # fmt: skip
    BuildState(**{**base, **fields}).save(path)
    return path


def test_cached_kernel_is_the_cache_entry_byte_for_byte(tmp_path: Path, tree: Path) -> None:
    config = (tree / ".config").read_bytes()
    meta = KernelMetadata(source=KernelSource.tarball(), arch="x86_64", image_name="bzImage",
                          built_at=cache.utc_now(), config_hash=crc(config))
    entry = cache.store(KEY, tree / "arch/x86/boot/bzImage", vmlinux=tree / "vmlinux",
                        metadata=meta)
    state = state_file(tmp_path, outcome="cached", cache_key=KEY, entry_dir=str(entry.path),
                       source_dir=str(tree), config_hash=crc(config))
    before = state.read_bytes()
    rc, got, err = publish(state)
    assert rc == 0, err
    assert got["publish"] is True and got["vmlinux_from"] == "cache entry"
    assert got["missing"] == [] and got["notes"] == [] and got["cache_key"] == KEY
    bundle = Path(got["dir"])
    assert bundle == state.parent / "publish"
    assert sorted(got["files"]) == [".config", "bzImage", "metadata.json", "vmlinux"]
    for name in ("bzImage", "vmlinux", "metadata.json"):
        data = (entry.path / name).read_bytes()
        assert Path(got["files"][name]["path"]).read_bytes() == data, name
        assert got["files"][name] == {"path": str(bundle / name), "size": len(data),
                                      "sha256": hashlib.sha256(data).hexdigest()}
    assert (bundle / ".config").read_bytes() == config
    sums = dict(reversed(line.split("  ", 1)) for line in
                Path(got["sums"]).read_text().splitlines())
    assert sums == {n: f["sha256"] for n, f in got["files"].items()}
    assert state.read_bytes() == before  # publishing never changes the build's state


def test_built_but_not_cached_kernel_is_stripped_on_the_worker(tmp_path: Path,
                                                               tree: Path) -> None:
    state = state_file(tmp_path, outcome="dirty-not-cached", source_dir=str(tree),
                       image_path=str(tree / "arch/x86/boot/bzImage"), config_hash="ffffffff",
                       diff_hash="d" * 64)
    rc, got, err = publish(state, "--out", str(tmp_path / "out"))
    assert rc == 0, err
    bundle = tmp_path / "out"
    assert got["dir"] == str(bundle) and got["diff_hash"] == "d" * 64
    assert got["vmlinux_from"] == "source tree, stripped on the worker"
    assert (bundle / "vmlinux").stat().st_size < (tree / "vmlinux").stat().st_size
    assert (bundle / "vmlinux").stat().st_mode & 0o777 == 0o644
    meta = KernelMetadata.from_json((bundle / "metadata.json").read_text())
    assert meta.has_vmlinux and meta.vmlinux_stripped and meta.image_name == "bzImage"
    assert meta.source.to_json()["type"] == "local" and meta.config_hash == "ffffffff"
    # The tree's .config is not the one this kernel was built from: left out, and said so.
    assert got["missing"] == [".config"] and ".config" not in got["files"]
    assert "is not the one this kernel was built from (ffffffff)" in got["notes"][0]


def test_failed_build_has_nothing_to_publish(tmp_path: Path) -> None:
    rc, got, _ = publish(state_file(tmp_path, outcome="failed"))
    assert rc == 0 and got == {"ok": True, "publish": False,
                               "reason": "no built kernel (outcome failed)"}


def test_missing_image_is_an_error(tmp_path: Path, tree: Path) -> None:
    state = state_file(tmp_path, outcome="store-failed", source_dir=str(tree),
                       image_path=str(tree / "gone/bzImage"))
    rc, got, err = publish(state)
    assert rc == 1 and got["ok"] is False
    assert got["errors"][0]["kind"] == "publish-failed"
    assert "bzImage of this build is missing" in got["errors"][0]["message"]


def test_no_state_is_an_error(tmp_path: Path) -> None:
    rc, got, _ = publish(tmp_path / "none.json")
    assert rc == 1 and got["errors"][0]["kind"] == "no-state"
