"""``make soak``: pushes with random kills for a bounded time, on a real service.

A real master and two pinned workers (tests/support/servicekit.py, fake LLC groups)
build fake kernel trees whose make sleeps a few seconds. Round after round it
pushes a new commit to one of a few branches and, while that build's make
runs, does one thing at random: ``kill -9`` the worker that runs it, the
build's holder or the master (restarted at once, as ``make run`` would), stops
the build from the web API, or nothing. A fault is survived when

* every process of the build was dead before any of its locks let go,
* nothing of it is held afterwards (holder, cgroup, flocks), and
* the service goes on: the branch's newest push is built green in the end
  (retried by Buildbot after a lost worker or master; rebuilt by hand, as a
  developer would, after a lost holder or a stop, which fail the build).

At the end it checks every finished build has its row in the records
database and prints::

    soak: 24 rounds in 600 s: faults survived 19 / tried 19; pushes built 24 / 24; rows lost 0

Exit status 0 exactly when every fault was survived, every push was built and
no row was lost. ``SOAK_SECONDS`` bounds the run (default 600); ``SOAK_SEED``
repeats a run's choices.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from master.records import db as records_db  # noqa: E402
from master.records import queries  # noqa: E402
from tests.support.fakekernel import slow_tree_files  # noqa: E402
from tests.support.faultkit import (  # noqa: E402
    assert_nothing_held,
    the_locks,
    wait_make_running,
    watch_build_end,
)
from tests.support.servicekit import ServiceKit  # noqa: E402

FAULTS = ("worker", "holder", "master", "stop", "none")
BRANCHES = ("soak-a", "soak-b", "soak-c")


def say(msg: str) -> None:
    print(f"soak: {msg}", flush=True)


def inject(kit: ServiceKit, fault: str, buildid: int) -> None:
    """Do ``fault`` to build ``buildid`` while its make runs; check the build ends cleanly."""
    props, st, procs = wait_make_running(kit, buildid)
    locks = the_locks(kit, props, st)
    if fault == "worker":
        os.kill(kit.worker_pids()[props["workername"]], signal.SIGKILL)
    elif fault == "holder":
        os.kill(st["pid"], signal.SIGKILL)
    elif fault == "master":
        os.kill(kit.service.master_state().pid, signal.SIGKILL)
    elif fault == "stop":
        status, body = kit.stop_build(buildid, "soak")
        assert status == 200, body
    if fault == "none":
        return
    took = watch_build_end(procs, st["pid"], locks, limit=60)
    assert_nothing_held(kit, st)
    say(f"  {fault}: build {buildid} ended {took:.1f}s after the fault, nothing held")
    if fault == "master":
        kit.start()  # `make run` again


def newest_push_built(kit: ServiceKit, branch: str, sha: str, timeout: float) -> bool:
    def built() -> bool:
        for b in reversed(kit.builds(branch=branch)):
            rev = b.get("properties", {}).get("got_revision", [None])[0]
            if b["complete"] and b["results"] == kit.SUCCESS and rev == sha:
                return True
        return False

    try:
        kit.wait_for(built, timeout, f"{branch} at {sha[:12]} built green", interval=0.5)
        return True
    except AssertionError:
        return False


def rows_lost(kit: ServiceKit) -> list[int]:
    finished = {b["buildid"] for b in kit.api("builds", complete="true")["builds"]}
    engine = records_db.make_engine(kit.settings.databases.records, must_exist=True)
    try:
        have = {r["buildid"] for r in queries.recent_builds(engine, limit=100000)}
    finally:
        engine.dispose()
    return sorted(finished - have)


def main() -> int:
    if len(sys.argv) > 1:
        print(__doc__.split("\n\n", 1)[0], "\nusage: SOAK_SECONDS=N SOAK_SEED=N python bench/soak.py",
              file=sys.stderr)
        return 0 if sys.argv[1] in ("-h", "--help") else 2
    # A TERM (timeout, CI) unwinds like ^C, so the service kit stops every process it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    seed = int(os.environ.get("SOAK_SEED", str(int(time.time()))))
    rnd = random.Random(seed)
    say(f"{seconds:.0f} s, seed {seed} (SOAK_SEED={seed} repeats it)")
    tried = survived = rounds = pushes = built = 0
    with tempfile.TemporaryDirectory(prefix="ktstr-soak-") as tmp, \
            ServiceKit(Path(tmp), llc_groups=[[0], [1]], profiles=("tiny",)) as kit:
        trees = {b: kit.make_tree(slow_tree_files(6, b), path=kit.root / "src" / b)
                 for b in BRANCHES}
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rounds += 1
            branch = rnd.choice(BRANCHES)
            fault = rnd.choice(FAULTS)
            sha = kit.commit(trees[branch], {"README": f"{branch} round {rounds}\n"}, "soak")
            say(f"round {rounds}: {branch} at {sha[:12]}, fault {fault}")
            pushes += 1
            try:
                before = max((b["buildid"] for b in kit.builds()), default=0)
                kit.push(trees[branch], branch)
                bid = kit.wait_build(branch, after_buildid=before, timeout=120)["buildid"]
                inject(kit, fault, bid)
                if fault != "none":
                    tried += 1
                if fault in ("holder", "stop"):
                    # These end the build for good (never green); a developer rebuilds.
                    res = kit.wait_finished(bid, timeout=120)["results"]
                    assert res in (kit.FAILURE, kit.EXCEPTION, kit.CANCELLED), res
                    status, body = kit.force("linux-tiny", branch, revision=sha)
                    assert status == 200, body
                if newest_push_built(kit, branch, sha, timeout=240):
                    built += 1
                    survived += fault != "none"
                else:
                    say(f"  {branch} at {sha[:12]} was not built green after the fault")
            except Exception:
                tried += fault != "none"
                say(f"  round {rounds} failed:\n{traceback.format_exc()}")
                if not kit.service.master_state().running:
                    kit.start()
        # A build that ended without its record step gets its row a few seconds later.
        deadline = time.monotonic() + 30
        while (lost := rows_lost(kit)) and time.monotonic() < deadline:
            time.sleep(1)
    say(f"{rounds} rounds in {seconds:.0f} s: faults survived {survived} / tried {tried}; "
        f"pushes built {built} / {pushes}; rows lost {len(lost)}"
        + (f" (builds {lost})" if lost else ""))
    return 0 if survived == tried and built == pushes and not lost else 1


if __name__ == "__main__":
    sys.exit(main())
