"""Helpers for the records fault tests: another process holding SQLite's write lock, and
a stand-in factory whose builds are recorded (for tests/support/servicekit.py).

``SqliteLock(path)`` starts a separate Python process that opens the SQLite file
and runs ``BEGIN EXCLUSIVE``, the way a backup, a ``sqlite3`` shell or a second
writer would; the records service then gets "database is locked" on every
write. ``release()`` (or leaving the ``with`` block) commits and ends that
process; ``hold_for`` ends it by itself after so many seconds.

``recorded_standin_factory`` is the servicekit stand-in (``info`` + ``hold``,
the hold time from :meth:`ServiceKit.set_hold`) plus the real ``Record`` step,
so a build can be held mid-way, faulted, and its records row checked without
building a kernel.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

_HOLDER = r"""
import sqlite3, sys, select
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
# Hold until stdin closes (release) or the time is up.
select.select([sys.stdin], [], [], float(sys.argv[2]))
conn.execute("COMMIT")
conn.close()
print("released", flush=True)
"""


class SqliteLock:
    """Another process holding an exclusive lock on a SQLite file (see the module docstring)."""

    def __init__(self, path: Path | str, hold_for: float = 600.0) -> None:
        self.path = Path(path)
        self.hold_for = hold_for
        self.proc: subprocess.Popen[str] | None = None

    def acquire(self) -> SqliteLock:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(self.path), str(self.hold_for)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "locked":
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"the lock holder did not lock {self.path}: {line!r} {err}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def release(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def __enter__(self) -> SqliteLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def recorded_standin_factory(*, repourl: str, profile: str, **_: Any):
    """servicekit's stand-in factory plus the real Record step (see the module docstring)."""
    from ktstr_steps.buildsteps.record import Record
    from tests.support.servicekit import standin_factory

    f = standin_factory(repourl=repourl, profile=profile)
    f.addStep(Record())
    return f


T0 = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)


def build_row(**kw):
    row = {
        "builder": "push",
        "branch": "main",
        "revision": "1a2b3c4d5e6f",
        "worker": "host-llc0",
        "host": "host",
        "llc_index": 0,
        "llc_cpus": "0-1",
        "make_jobs": 2,
        "kernel_outcome": "cached",
        "result": "success",
        "started_at": T0,
        "finished_at": T0 + dt.timedelta(minutes=6),
    }
    row.update(kw)
    return row
