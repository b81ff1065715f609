"""The source-tree lock (ktstr's per-tree flock under ``<cache>/.locks``), and its wait timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from ktstr_steps import flock
from ktstr_steps.errors import KtstrError, ResourceContention
from ktstr_steps.tree_lock import acquire_source_tree_lock, source_lock_path

# A second build of the same tree, in its own process: prints its JSON when it
# finally holds the lock.
SECOND = """
import json, sys, time
from ktstr_steps.tree_lock import acquire_source_tree_lock
wait = None if sys.argv[3] == "none" else float(sys.argv[3])
start = time.monotonic()
try:
    lock = acquire_source_tree_lock(sys.argv[1], sys.argv[2], wait=wait)
except Exception as exc:
    print(json.dumps({"error": str(exc), "kind": getattr(exc, "kind", None)}), flush=True)
    sys.exit(1)
print(json.dumps({"elapsed": time.monotonic() - start, **lock.to_json()}), flush=True)
lock.release()
"""


def crc(path: str) -> str:
    return f"{zlib.crc32(path.encode()) & 0xFFFFFFFF:08x}"


def second(canonical: str, cache: Path, wait: str = "none") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SECOND, canonical, str(cache), wait],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_path_is_source_crc32_under_cache_locks(isolated_env):
    assert source_lock_path("/home/u/linux", isolated_env) == (
        isolated_env / ".locks" / "source-782a63a6.lock"
    )  # CRC32 of the path as ktstr computes it: source-782a63a6.lock
    raw = b"/src/\xfflinux"  # non-UTF-8 bytes hash as they are
    expected = f"source-{zlib.crc32(raw) & 0xFFFFFFFF:08x}.lock"
    assert source_lock_path(raw, isolated_env).name == expected
    assert source_lock_path(Path(os.fsdecode(raw)), isolated_env).name == expected


def test_acquire_succeeds_on_fresh_path_and_creates_the_lockfile(isolated_env):
    canonical = "/tmp/fake-source-tree-for-test"
    assert not Path(canonical).exists() and not (isolated_env / ".locks").exists()
    lock = acquire_source_tree_lock(canonical, isolated_env)
    try:
        expected = isolated_env / ".locks" / f"source-{crc(canonical)}.lock"
        assert lock.path == expected and expected.exists()
        assert lock.waited == 0.0 and lock.holders_seen == []
        assert [(h.pid, h.mode) for h in flock.holders(expected)] == [(os.getpid(), "WRITE")]
    finally:
        lock.release()
    assert flock.holders(expected) == []


def test_distinct_paths_yield_distinct_lockfiles_and_do_not_serialize(isolated_env):
    a = acquire_source_tree_lock("/tmp/fake-source-a", isolated_env, wait=0)
    b = acquire_source_tree_lock("/tmp/fake-source-b", isolated_env, wait=0)
    try:
        assert crc("/tmp/fake-source-a") != crc("/tmp/fake-source-b")
        assert a.path != b.path and a.path.exists() and b.path.exists()
        assert a.held and b.held and b.waited == 0.0
    finally:
        a.release()
        b.release()


def test_second_acquirer_blocks_visibly_then_proceeds_after_release(isolated_env):
    canonical = "/tmp/fake-source-contention"
    holder = acquire_source_tree_lock(canonical, isolated_env)
    proc = second(canonical, isolated_env)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.pid not in flock.waiters(holder.path):
            time.sleep(0.01)
        # The kernel's blocked-flock state: a `->` line for the lockfile's inode.
        assert flock.waiters(holder.path) == [proc.pid]
        ino = os.stat(holder.path).st_ino
        raw = [ln for ln in Path("/proc/locks").read_text().splitlines() if "->" in ln]
        assert any(ln.split()[-3].endswith(f":{ino}") and str(proc.pid) in ln for ln in raw)
        time.sleep(0.2)
    finally:
        holder.release()
    out, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err
    got = json.loads(out)
    assert got["elapsed"] >= 0.2 and got["waited_seconds"] >= 0.2
    assert got["lockfile"] == str(holder.path)
    assert got["holders_seen"] == [{"pid": os.getpid(), "cmd": flock.cmdline_of(os.getpid())}]
    assert (
        f"ktstr-ci: source tree {canonical} is locked by a concurrent ktstr build — "
        "waiting for it to finish.\n"
        f"  pid={os.getpid()} cmd="
    ) in err


def test_wait_times_out_with_a_clear_error_and_holds_nothing(isolated_env):
    canonical = "/tmp/fake-source-timeout"
    holder = acquire_source_tree_lock(canonical, isolated_env)
    try:
        proc = second(canonical, isolated_env, wait="0.5")
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 1
        got = json.loads(out)
        assert got["kind"] == "resource-contention"
        assert f"source tree {canonical} is still locked" in got["error"]
        assert f"pid={os.getpid()}" in got["error"] and "after 0.5s" in got["error"]
        # The timed-out process is gone; only we hold the file, nobody waits.
        assert [h.pid for h in flock.holders(holder.path)] == [os.getpid()]
        assert flock.waiters(holder.path) == []
    finally:
        holder.release()


def test_same_process_second_open_contends_like_a_thread(isolated_env):
    # flock is per open file description: a second acquire in this very process
    # must contend, not silently share, just as a second thread's would.
    lock = acquire_source_tree_lock("/tmp/fake-same-process", isolated_env)
    try:
        with pytest.raises(ResourceContention):
            acquire_source_tree_lock("/tmp/fake-same-process", isolated_env, wait=0.3)
    finally:
        lock.release()


def test_unidentified_holder_message(isolated_env, monkeypatch, capfd):
    canonical = "/tmp/fake-unidentified"
    lock = acquire_source_tree_lock(canonical, isolated_env)
    monkeypatch.setattr(flock, "holders", lambda path, lines=None: [])
    try:
        with pytest.raises(ResourceContention):
            acquire_source_tree_lock(canonical, isolated_env, wait=0.2)
    finally:
        lock.release()
    assert "(holder not identified via /proc/locks)" in capfd.readouterr().err


def test_unusable_cache_root_is_a_clear_error(tmp_path):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("")
    with pytest.raises(KtstrError) as exc:
        acquire_source_tree_lock("/tmp/x", blocker)
    assert exc.value.kind == "lockfile-unusable" and str(blocker / ".locks") in str(exc.value)
