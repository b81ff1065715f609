"""Faults of a reservation, with real processes: the build never outlives its locks.

Each test runs a real holder (``ktstr-ci holder acquire``), real build
processes inside its v1 cpuset sandbox (started the way make is: in a new
session, so a process-group kill would miss them), and then takes the owner,
the holder or the master connection away with ``kill -9`` or a closed socket.
The invariant checked while it happens: whenever a lock is free, no process
of the build is alive.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ktstr_steps import buildprocs, flock, holder
from tests.support.holderkit import acquire, cli


def lock_tree(name: str, tree: Path) -> Path:
    tree.mkdir(exist_ok=True)
    r = cli("holder", "lock-source", "--name", name, "--source", str(tree), "--json")
    assert r.returncode == 0, r.stderr
    return Path(json.loads(r.stdout)["lockfile"])


def start_build(name: str) -> tuple[subprocess.Popen, int]:
    """``holder run`` a shell that starts a detached 'make' (own session) and waits on it."""
    p = subprocess.Popen(
        ["ktstr-ci", "holder", "run", "--name", name, "--", sys.executable, "-c",
         "import subprocess, sys\n"
         "c = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
         "print(c.pid, flush=True)\n"
         "c.wait()\n"],
        stdout=subprocess.PIPE, text=True,
    )
    child = int(p.stdout.readline())
    return p, child


def locked(path: Path) -> bool:
    return bool(flock.holders(path))


def llc_locked(lock_dir: Path) -> bool:
    return any(flock.holders(p) for p in lock_dir.glob("ktstr-llc-*.lock"))


def watch_until_free(pids: list[int], src: Path, lock_dir: Path, limit: float = 10.0) -> float:
    """Poll until every lock is free; whenever one is free no build pid may be alive."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        # locks first, processes second: a lock seen free stays free (nobody else takes it)
        src_free, llc_free = not locked(src), not llc_locked(lock_dir)
        alive = [p for p in pids if holder.pid_alive(p)]
        if src_free or llc_free:
            assert not alive, f"locks free (src={src_free}, llc={llc_free}) but {alive} alive"
        if src_free and llc_free:
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"locks still held after {limit}s")


def test_release_kills_the_build_before_the_locks_go(lock_dir: Path, owner, tmp_path: Path) -> None:
    st = acquire("rel", lock_dir, "--owner-pid", str(owner.pid))
    src = lock_tree("rel", tmp_path / "linux")
    runner, make = start_build("rel")
    cg = Path(st["sandbox"]["path"])
    assert str(make) in (cg / "cgroup.procs").read_text().split()  # in the sandbox, own session
    assert os.getsid(make) != os.getsid(runner.pid)

    rel = subprocess.Popen(["ktstr-ci", "holder", "release", "--name", "rel", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watch_until_free([make, runner.pid], src, lock_dir)
    out, err = rel.communicate(timeout=30)
    assert json.loads(out)["released"] == ["processes", "source-lock", "sandbox", "llc-locks"]
    runner.wait(timeout=5)
    assert not holder.pid_alive(make) and not cg.exists()
    log = holder.log_path("rel").read_text()
    assert "killed the build's processes (release requested): " in log and f"sleep[{make}]" in log


def test_owner_kill9_kills_the_build_then_releases(lock_dir: Path, tmp_path: Path) -> None:
    worker = subprocess.Popen(["sleep", "600"])
    st = acquire("own", lock_dir, "--owner-pid", str(worker.pid))
    src = lock_tree("own", tmp_path / "linux")
    runner, make = start_build("own")
    os.kill(worker.pid, signal.SIGKILL)  # the buildbot-worker dies mid-make
    worker.wait()
    took = watch_until_free([make, runner.pid], src, lock_dir)
    assert took < 5
    runner.wait(timeout=5)
    deadline = time.monotonic() + 5
    while holder.pid_alive(st["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not holder.pid_alive(st["pid"]) and not Path(st["sandbox"]["path"]).exists()
    assert not holder.state_path("own").exists()
    assert f"owner pid {worker.pid} exited" in holder.log_path("own").read_text()


GUARDED_PHASE = """
import json, subprocess, sys, time
from ktstr_steps.holder import join_and_guard
g = join_and_guard(sys.argv[1])
child = subprocess.Popen(["sleep", "600"], start_new_session=True)
print(json.dumps({"child": child.pid}), flush=True)
while g.lost is None:
    time.sleep(0.02)
g.wait_ended()
child.wait()
print(json.dumps({"lost": g.lost, "killed": [k.pid for k in g.killed]}), flush=True)
"""


def test_holder_kill9_guard_kills_the_build_and_keeps_the_locks_until_then(
    lock_dir: Path, owner, tmp_path: Path
) -> None:
    st = acquire("g", lock_dir, "--owner-pid", str(owner.pid))
    src = lock_tree("g", tmp_path / "linux")
    phase = subprocess.Popen([sys.executable, "-c", GUARDED_PHASE, "g"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    make = json.loads(phase.stdout.readline())["child"]
    os.kill(st["pid"], signal.SIGKILL)  # the holder dies; its own flock descriptors close
    time.sleep(0.05)
    watch_until_free([make], src, lock_dir)
    out, err = phase.communicate(timeout=20)
    end = json.loads(out.strip().splitlines()[-1])
    assert end["lost"] == f"reservation lost: holder pid {st['pid']} died"
    assert make in end["killed"]
    assert not holder.pid_alive(make) and not Path(st["sandbox"]["path"]).exists()
    assert "reservation lost" in err


def test_phase_command_fails_with_reservation_lost(lock_dir: Path, owner, tmp_path: Path) -> None:
    """A phase command that joins a dead holder fails clearly and does nothing."""
    st = acquire("pd", lock_dir, "--owner-pid", str(owner.pid))
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"holder": "pd", "source_dir": str(tmp_path)}))
    os.kill(st["pid"], signal.SIGKILL)
    while holder.pid_alive(st["pid"]):
        time.sleep(0.02)
    r = cli("phase", "store", "--state", str(state), "--json")
    assert r.returncode == 1
    err = json.loads(r.stdout)["errors"][0]
    assert err == {"kind": "reservation-lost",
                   "message": f"reservation lost: holder pid {st['pid']} died"}
    # the release step that always runs cleans what the dead holder left
    rel = cli("holder", "release", "--name", "pd", "--json")
    assert json.loads(rel.stdout)["released"] == ["sandbox"]
    assert not Path(st["sandbox"]["path"]).exists()


def _connected_owner(port: int) -> tuple[subprocess.Popen, int]:
    """A stand-in worker holding one TCP connection to a stand-in master; its local port."""
    p = subprocess.Popen(
        [sys.executable, "-c",
         "import socket, sys, time\n"
         f"s = socket.create_connection(('127.0.0.1', {port}))\n"
         "print(s.getsockname()[1], flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True,
    )
    return p, int(p.stdout.readline())


def test_closed_master_connection_kills_the_build_and_releases(lock_dir: Path, tmp_path: Path) -> None:
    master = socket.create_server(("127.0.0.1", 0))
    worker, local_port = _connected_owner(master.getsockname()[1])
    conn, _ = master.accept()
    try:
        st = acquire("ml", lock_dir, "--owner-pid", str(worker.pid),
                     "--master-link", f"127.0.0.1:{local_port}")
        assert st["master_link"] == f"127.0.0.1:{local_port}"
        src = lock_tree("ml", tmp_path / "linux")
        runner, make = start_build("ml")
        time.sleep(1.5)
        assert holder.pid_alive(st["pid"]) and holder.pid_alive(make)  # connection still up
        conn.close()  # the master is gone: the worker's side leaves ESTABLISHED
        master.close()
        took = watch_until_free([make, runner.pid], src, lock_dir)
        assert took < 5
        runner.wait(timeout=5)
        log = holder.log_path("ml").read_text()
        assert f"connection to the master (127.0.0.1:{local_port}) closed" in log
        assert holder.pid_alive(worker.pid)  # the worker itself lives on and reconnects
    finally:
        worker.kill()
        worker.wait()


def test_unseen_master_connection_follows_the_owner_only(lock_dir: Path, owner) -> None:
    r = cli("holder", "acquire", "--name", "nl", "--lock-dir", str(lock_dir), "--owner-pid",
            str(owner.pid), "--master-link", "127.0.0.1:1", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["master_link"] is None
    assert "is not among pid" in r.stderr and "follows the worker process only" in r.stderr
    time.sleep(2)
    assert holder.pid_alive(st["pid"])
    cli("holder", "release", "--name", "nl", "--json")


@pytest.mark.parametrize("link", ["nohost", "127.0.0.1:0", "127.0.0.1:99999", ":80", "h:p"])
def test_bad_master_link_refused(link: str, lock_dir: Path, owner) -> None:
    r = cli("holder", "acquire", "--name", "bl", "--lock-dir", str(lock_dir), "--owner-pid",
            str(owner.pid), "--master-link", link, "--json")
    assert r.returncode == 1 and "--master-link" in r.stderr and "HOST:PORT" in r.stderr
    assert not holder.state_path("bl").exists() and not llc_locked(lock_dir)


def test_marked_processes_are_the_build_without_a_cgroup(tmp_path: Path) -> None:
    env = {**os.environ, buildprocs.MARKER_ENV: "b:1"}
    build = subprocess.Popen(["sleep", "600"], env=env, start_new_session=True)
    other = subprocess.Popen(["sleep", "600"])
    # a fake cgroup.procs that lists a stranger: never killed, it is not in that cgroup
    fake = tmp_path / "ktstr-build-1-2"
    fake.mkdir()
    (fake / "cgroup.procs").write_text(f"{other.pid}\n")
    try:
        assert buildprocs.build_pids(fake, "b:1") == {build.pid}
        killed, survivors = buildprocs.kill_build(fake, "b:1")
        assert [k.pid for k in killed] == [build.pid] and survivors == []
        assert build.wait(timeout=5) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
