"""The cache under concurrency, with real processes and real flocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ktstr_steps import cache
from ktstr_steps.cache import KernelMetadata, KernelSource, ValidEntry
from ktstr_steps.errors import KtstrError
from tests.support.cachekit import hold_lock, lock_is_free
from tests.support.vmlinux import build_vmlinux

REPO = Path(__file__).resolve().parents[2]
KEY = "local-1a2b3c4-x86_64-kcc0bd848c"
WRITERS = 4
ROUNDS = 3


def meta(version: str) -> KernelMetadata:
    return KernelMetadata(
        source=KernelSource.local("/src/linux", "1a2b3c4"),
        arch="x86_64",
        image_name="bzImage",
        built_at=cache.utc_now(),
        version=version,
        ktstr_kconfig_hash="c0bd848c",
    )


def run_py(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


WRITER = """
import os, sys, time
from pathlib import Path
from ktstr_steps import cache
from ktstr_steps.cache import KernelMetadata, KernelSource
root, key, idx, vmlinux, rounds, go = sys.argv[1:]
img = Path(root).parent / f"img-{idx}"
img.write_bytes(f"image-{idx};".encode() * 4096)
while not os.path.exists(go):
    time.sleep(0.001)
for _ in range(int(rounds)):
    m = KernelMetadata(source=KernelSource.local("/src/linux", "1a2b3c4"), arch="x86_64",
                       image_name="bzImage", built_at=cache.utc_now(), version=f"6.14.{idx}",
                       ktstr_kconfig_hash="c0bd848c")
    cache.store(key, img, vmlinux=Path(vmlinux), metadata=m, root=root)
print("stored", flush=True)
"""

READER = """
import json, os, sys
from pathlib import Path
from ktstr_steps import cache
root, key, stop, out = sys.argv[1:]
entry = Path(root) / key
stats = dict(lookups=0, hits=0, misses_after_first=0, torn=0, raced=0, versions=[])
seen = False

def read(fd):
    with os.fdopen(fd, "rb") as fh:
        return fh.read()

print("reading", flush=True)
while True:
    stopping = os.path.exists(stop)
    stats["lookups"] += 1
    hit = cache.lookup(key, root=root)
    if hit is None:
        if seen:
            stats["misses_after_first"] += 1
    else:
        seen = True
        stats["hits"] += 1
        # Pin one directory state through a dir fd and open its three files:
        # every state a reader can reach must be complete and self-consistent
        # (image matches metadata, vmlinux present). Files are never rewritten
        # in place, so once open their bytes are fixed.
        try:
            dfd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            stats["misses_after_first"] += 1
            continue
        fds = []
        try:
            for name in ("metadata.json", "bzImage", "vmlinux"):
                fds.append(os.open(name, os.O_RDONLY, dir_fd=dfd))
        except FileNotFoundError:
            # The state we pinned was swapped out and is being removed.
            stats["raced"] += 1
            for fd in fds:
                os.close(fd)
            continue
        finally:
            os.close(dfd)
        m = json.loads(read(fds[0]))
        img = read(fds[1])
        os.close(fds[2])
        idx = m["version"].rsplit(".", 1)[1]
        if img != f"image-{idx};".encode() * 4096 or not m["has_vmlinux"]:
            stats["torn"] += 1
        if m["version"] not in stats["versions"]:
            stats["versions"].append(m["version"])
    if stopping:
        break
Path(out).write_text(json.dumps(stats))
"""


def test_concurrent_stores_and_reader(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    vmlinux = build_vmlinux(tmp_path / "build" / "vmlinux")
    go, stop, out = tmp_path / "go", tmp_path / "stop", tmp_path / "reader.json"

    reader = run_py(READER, str(root), KEY, str(stop), str(out))
    assert reader.stdout.readline().strip() == "reading"
    writers = [
        run_py(WRITER, str(root), KEY, str(i), str(vmlinux), str(ROUNDS), str(go))
        for i in range(WRITERS)
    ]
    time.sleep(0.3)  # let every writer reach the start line
    go.touch()
    for w in writers:
        stdout, stderr = w.communicate(timeout=120)
        assert w.returncode == 0, stderr
        assert stdout.strip() == "stored"
    stop.touch()
    _, rerr = reader.communicate(timeout=60)
    assert reader.returncode == 0, rerr
    stats = json.loads(out.read_text())

    assert stats["hits"] > 0
    assert stats["misses_after_first"] == 0, stats
    assert stats["torn"] == 0, stats
    assert len(stats["versions"]) >= 1

    # Exactly one valid entry, no debris, nobody holding the lock.
    listed = cache.list_entries(root)
    assert len(listed) == 1 and isinstance(listed[0], ValidEntry), listed
    entry = listed[0]
    assert entry.key == KEY
    assert entry.metadata.version in {f"6.14.{i}" for i in range(WRITERS)}
    assert entry.metadata.has_vmlinux and entry.metadata.vmlinux_stripped
    assert sorted(os.listdir(root)) == [".locks", KEY]
    assert sorted(os.listdir(root / KEY)) == ["bzImage", "metadata.json", "vmlinux"]
    assert lock_is_free(root, KEY)


CRASHING_WRITER = """
import sys, time
from pathlib import Path
from ktstr_steps import cache
from ktstr_steps.cache import KernelMetadata, KernelSource, writer
root, key, image, vmlinux, marker = sys.argv[1:]

def stuck_strip(src, dst):
    Path(marker).write_text("stripping")
    time.sleep(120)

writer.strip_vmlinux = stuck_strip  # hold the store mid-way so it can be killed there
m = KernelMetadata(source=KernelSource.tarball(), arch="x86_64", image_name="bzImage",
                   built_at=cache.utc_now())
cache.store(key, Path(image), vmlinux=Path(vmlinux), metadata=m, root=root)
"""


def test_killed_store_debris_is_swept(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    image = tmp_path / "bzImage"
    image.write_bytes(b"image")
    vmlinux = build_vmlinux(tmp_path / "build" / "vmlinux")
    marker = tmp_path / "marker"

    victim = run_py(CRASHING_WRITER, str(root), KEY, str(image), str(vmlinux), str(marker))
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    debris = root / f".tmp-{KEY}-{victim.pid}"
    assert (debris / "bzImage").exists()
    assert not lock_is_free(root, KEY)  # the victim holds the store lock

    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert debris.exists()  # a crash leaves its temp dir behind...

    entry = cache.store(KEY, image, vmlinux=vmlinux, metadata=meta("6.14.2"), root=root)
    assert not debris.exists()  # ...and the next store sweeps it (its pid is dead)
    assert entry.metadata.vmlinux_stripped
    assert sorted(os.listdir(root)) == [".locks", KEY]


def test_store_lock_timeout_names_holder(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    image = tmp_path / "bzImage"
    image.write_bytes(b"image")
    lock = root / ".locks" / f"{KEY}.lock"
    holder = hold_lock(lock, "LOCK_EX")
    try:
        start = time.monotonic()
        with pytest.raises(KtstrError) as info:
            cache.store(
                KEY, image, vmlinux=None, metadata=meta("6.14.2"), root=root, lock_timeout=0.5
            )
        waited = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
    msg = str(info.value)
    assert msg.startswith(
        f'flock LOCK_EX on cache entry "{KEY}" timed out after 0.5s (lockfile {lock}, holders: '
    )
    assert f"pid={holder.pid} cmd=" in msg and msg.endswith(").")
    assert info.value.kind == "cache-lock-timeout"
    assert 0.5 <= waited < 5
    assert sorted(os.listdir(root)) == [".locks"]  # no entry, no temp dir
    assert lock_is_free(root, KEY)  # the failed store let go of its descriptor


def test_store_waits_for_a_short_holder(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    image = tmp_path / "bzImage"
    image.write_bytes(b"image")
    lock = root / ".locks" / f"{KEY}.lock"
    lock.parent.mkdir(parents=True)
    holder = run_py(
        """
        import fcntl, os, sys, time
        fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        time.sleep(0.7)
        """,
        str(lock),
    )
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    entry = cache.store(
        KEY, image, vmlinux=None, metadata=meta("6.14.2"), root=root, lock_timeout=20
    )
    assert time.monotonic() - start >= 0.3  # it polled instead of failing or skipping the lock
    holder.wait(timeout=10)
    assert entry.image_path.read_bytes() == b"image"


def test_force_probe_sees_store_in_progress(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    holder = hold_lock(root / ".locks" / f"{KEY}.lock", "LOCK_EX")
    try:
        with pytest.raises(KtstrError, match=f"pid={holder.pid}"):
            cache.force_probe(KEY, root=root)
    finally:
        holder.kill()
        holder.wait()
    cache.force_probe(KEY, root=root)
