"""faultkit: watch a build of a real service (tests/support/servicekit.py) while a process is killed.

Used by the fault suite and by ``make soak``. A build's processes are found
by the holder marker every joined command carries in its environment
(``KTSTR_CI_HOLDER=<holder name>:<pid>``); its locks are the source-tree lock
of its tree and ktstr's LLC locks of its plan.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil

from ktstr_steps import flock
from ktstr_steps.buildprocs import MARKER_ENV
from ktstr_steps.tree_lock import source_lock_path
from tests.support.servicekit import ServiceKit

LLC_LOCKS = Path("/tmp")  # where the kit's workers take ktstr's LLC locks (ktstr's default)


def build_processes(holder: str) -> list[psutil.Process]:
    """Every live process carrying holder ``holder``'s marker (the phase command, make, sleep)."""
    out = []
    for p in psutil.process_iter():
        try:
            tag = p.environ().get(MARKER_ENV, "")
            if tag.split(":", 1)[0] == holder and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def wait_make_running(kit: ServiceKit, buildid: int, timeout: float = 120) -> tuple[dict, dict, list]:
    """Wait for the long sleep of this build's make; (props, holder state, its processes)."""

    def running():
        props = kit.build_properties(buildid)
        name = props.get("holder_name")
        if not name:
            return None
        procs = build_processes(name)
        if not any(_name(p) == "sleep" for p in procs):
            return None
        st = json.loads((kit.root / "run" / "holders" / f"{name}.json").read_text())
        return props, st, procs

    return kit.wait_for(running, timeout, f"build {buildid}'s make to run its sleep", interval=0.1)


def _name(p: psutil.Process) -> str | None:
    try:
        return p.name()
    except psutil.NoSuchProcess:  # a short-lived process of the build exited meanwhile
        return None


def lock_holders(path: Path) -> set[int]:
    return {h.pid for h in flock.holders(path)} if path.exists() else set()


def watch_build_end(procs: list[psutil.Process], holder_pid: int, locks: list[Path],
                    limit: float) -> float:
    """Poll until every process of the build is dead and none of ``locks`` lists its holder.

    Whenever a lock no longer lists the holder, every process of the build must
    already be dead. Returns the seconds it took.
    """
    start = time.monotonic()
    while time.monotonic() - start < limit:
        released = [p for p in locks if holder_pid not in lock_holders(p)]
        alive = [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not (released and alive), f"{released} released while {alive} still run"
        if not alive and len(released) == len(locks):
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"the build did not end within {limit}s")


def assert_nothing_held(kit: ServiceKit, holder_state: dict) -> None:
    def holder_gone() -> bool:
        try:
            return psutil.Process(holder_state["pid"]).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    # The holder exits right after its last release; give it that moment.
    kit.wait_for(holder_gone, 5, f"holder pid {holder_state['pid']} to exit", interval=0.05)
    sandbox = (holder_state.get("sandbox") or {}).get("path")
    assert not sandbox or not Path(sandbox).exists(), f"cgroup {sandbox} left behind"
    assert not build_processes(holder_state["name"])


def the_locks(kit: ServiceKit, props: dict, holder_state: dict) -> list[Path]:
    tree = str(Path(props["source_tree"]).resolve())
    llcs = [LLC_LOCKS / f"ktstr-llc-{i}.lock" for i in holder_state["plan"]["llcs"]]
    return [source_lock_path(tree, kit.cache_dir), *llcs]


