"""No push is lost, with real processes: push while the master is dead, it builds once it is back.

A real master (stand-in factory: builds take a second) and a real worker
(tests/support/servicekit.py), the real bare repository and hooks. The master is
killed with SIGKILL, so nothing of it runs during the pushes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from master.hooks import spool
from tests.support.servicekit import ServiceKit

pytestmark = pytest.mark.integration

STANDIN = "tests.support.servicekit:standin_factory"


def kill_master(kit: ServiceKit) -> None:
    pid = kit.service.master_state().pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    kit.wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
                 10, "the master to die")


def test_push_while_the_master_is_dead_builds_once_when_it_is_back(tmp_path: Path) -> None:
    with ServiceKit(tmp_path, factory=STANDIN) as kit:
        tree = kit.make_tree({"Makefile": "all:\n"})
        # the instant path works and is not built twice by the drain
        kit.push(tree, "up")
        first = kit.wait_finished(kit.wait_build("up", timeout=30)["buildid"], timeout=60)
        assert first["results"] == kit.SUCCESS

        kill_master(kit)
        down = kit.push(tree, "while-down")
        assert down.returncode == 0
        sdir = kit.repo_path / spool.SPOOL_NAME
        assert "is not reachable" in down.output
        assert f"the push of while-down is queued in {sdir} and builds when the master is back" in down.output
        # two pushes of one branch while down: only the newest tip builds
        kit.push(tree, "twice")
        newest = kit.commit(tree, {"b": "2\n"}, "second")
        again = kit.push(tree, "twice")
        assert "an earlier push of this branch is still queued" in again.output
        assert len(spool.pending(sdir)) == 3

        t0 = time.monotonic()
        kit.start()
        up = time.monotonic() - t0
        build = kit.wait_build("while-down", timeout=30)
        latency = time.monotonic() - t0
        done = kit.wait_finished(build["buildid"], timeout=60)
        assert done["results"] == kit.SUCCESS
        assert kit.build_properties(build["buildid"])["revision"] == down.sha
        twice = kit.wait_finished(kit.wait_build("twice", timeout=30)["buildid"], timeout=60)
        assert kit.build_properties(twice["buildid"])["revision"] == newest
        assert spool.pending(sdir) == []

        # a push with the master up again goes the instant way
        kit.commit(tree, {"c": "3\n"}, "third")
        res = kit.push(tree, "after")
        assert "build of after at" in res.output and "requested" in res.output
        kit.wait_finished(kit.wait_build("after", timeout=30)["buildid"], timeout=60)

        time.sleep(2 * 2.0 + 1)  # two more drain passes: nothing is added twice
        for branch in ("up", "while-down", "twice", "after"):
            assert len(kit.builds(branch=branch)) == 1, branch
        assert len([c for c in kit.changes() if c["branch"] == "twice"]) == 1
        print(f"\nmaster start: {up:.2f}s; master start -> spooled push building: {latency:.2f}s")
