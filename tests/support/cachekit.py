"""Kernel-cache helpers: metadata, hand-written entries, lock holders in other processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from ktstr_steps.cache import KernelMetadata, KernelSource
from ktstr_steps.flock import try_flock


def lock_is_free(root: Path, key: str) -> bool:
    fd = os.open(root / ".locks" / f"{key}.lock", os.O_RDWR)
    try:
        return try_flock(fd, exclusive=True)
    finally:
        os.close(fd)


def write_entry(root: Path, key: str, metadata_text: str | None, image: bool = True) -> Path:
    d = root / key
    d.mkdir(parents=True)
    if metadata_text is not None:
        (d / "metadata.json").write_text(metadata_text)
    if image:
        (d / "bzImage").write_bytes(b"img")
    return d


HOLD = textwrap.dedent(
    """
    import fcntl, os, sys, time
    path, mode = sys.argv[1], sys.argv[2]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
    fcntl.flock(fd, getattr(fcntl, mode))
    print("held", flush=True)
    time.sleep(120)
    """
)


def hold_lock(path: Path, mode: str) -> subprocess.Popen:
    """Another process holding an flock on ``path`` until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), mode], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def meta(**kw) -> KernelMetadata:
    base = dict(
        source=KernelSource.tarball(),
        arch="x86_64",
        image_name="bzImage",
        built_at="2026-04-12T10:00:00Z",
        version="6.14.2",
        config_hash="0badc0de",
        ktstr_kconfig_hash="c0bd848c",
    )
    base.update(kw)
    return KernelMetadata(**base)
