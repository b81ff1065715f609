"""flock helpers: holders and waiters read back from the real /proc/locks."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ktstr_steps import flock
from ktstr_steps.errors import KtstrError

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX if sys.argv[2] == "ex" else fcntl.LOCK_SH)
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder_proc(lock_holding_processes):
    def start(path: Path, mode: str = "ex") -> subprocess.Popen:
        return lock_holding_processes(HOLD, path, mode)

    return start


def test_holder_of_exclusive_lock_is_found_with_mode_and_cmdline(tmp_path, holder_proc):
    path = tmp_path / "x.lock"
    p = holder_proc(path, "ex")
    found = flock.holders(path)
    assert [(h.pid, h.mode) for h in found] == [(p.pid, "WRITE")]
    assert found[0].cmd.startswith(sys.executable)
    assert flock.format_holders(found).startswith(f"  pid={p.pid} cmd=")


def test_shared_holders_are_listed_once_each(tmp_path, holder_proc):
    path = tmp_path / "s.lock"
    a, b = holder_proc(path, "sh"), holder_proc(path, "sh")
    assert sorted(h.pid for h in flock.holders(path)) == sorted([a.pid, b.pid])
    assert {h.mode for h in flock.holders(path)} == {"READ"}


def test_try_acquire_fails_while_held_and_succeeds_after(tmp_path, holder_proc):
    path = tmp_path / "c.lock"
    p = holder_proc(path, "ex")
    assert flock.FileLock.try_acquire(path, exclusive=False) is None
    p.kill()
    p.wait()
    lock = flock.FileLock.try_acquire(path, exclusive=True)
    assert lock is not None and lock.held
    lock.release()
    assert not lock.held and flock.holders(path) == []


def test_blocked_waiter_shows_as_arrow_line(tmp_path, holder_proc):
    path = tmp_path / "w.lock"
    holder_proc(path, "ex")
    waiter = subprocess.Popen([sys.executable, "-c", HOLD, str(path), "ex"], stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and waiter.pid not in flock.waiters(path):
            time.sleep(0.05)
        assert waiter.pid in flock.waiters(path)
        assert waiter.pid not in [h.pid for h in flock.holders(path)]
    finally:
        waiter.kill()
        waiter.wait()


def test_no_holder_text():
    assert flock.format_holders([]) == "<none recorded>"


def test_parse_proc_locks_lines():
    text = (
        "1: FLOCK  ADVISORY  WRITE 123 00:2a:4567 0 EOF\n"
        "1: -> FLOCK  ADVISORY  WRITE 124 00:2a:4567 0 EOF\n"
        "2: POSIX  ADVISORY  READ 125 08:01:99 0 EOF\n"
        "garbage\n"
    )
    lines = flock.read_proc_locks(text)
    assert [(ln.kind, ln.pid, ln.waiter, ln.dev, ln.inode) for ln in lines] == [
        ("FLOCK", 123, False, (0, 0x2A), 4567),
        ("FLOCK", 124, True, (0, 0x2A), 4567),
        ("POSIX", 125, False, (8, 1), 99),
    ]


def test_remote_filesystem_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(flock, "fs_type", lambda p: 0x6969)
    with pytest.raises(KtstrError, match="filesystem NFS is not supported for ktstr lockfiles"):
        flock.open_lockfile(tmp_path / "n.lock")
    assert not (tmp_path / "n.lock").exists()


def test_local_tmpfs_or_disk_is_accepted(tmp_path):
    assert flock.fs_type(tmp_path) not in flock.REMOTE_FS
    fd = flock.open_lockfile(tmp_path / "ok.lock")
    assert fd >= 0


def test_unusable_lock_directory_is_a_clear_error(tmp_path):
    # Tests run as root, which ignores mode bits: a regular file where the
    # directory should be fails for real.
    (tmp_path / "file").write_text("")
    with pytest.raises(KtstrError, match="cannot create lock directory .*writable"):
        flock.open_lockfile(tmp_path / "file" / "sub" / "x.lock")
