"""Workers come back: supervisord restarts a worker that dies; `make status` shows restarts.

Unit tests of the generated supervisord config, the launcher's pid and starts
files and the restart count; then a real service (tests/support/servicekit.py: real
master, real supervisord, real buildbot-worker) whose worker is killed with
SIGKILL.
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ktstr_steps.cpulist import format_cpulist
from tests.support.paths import REPO
from tests.support.servicekit import ServiceKit
from workers import launch, supervise

STANDIN = "tests.support.servicekit:standin_factory"


def test_config_restarts_workers_and_never_kills_their_builds_by_group(tmp_path: Path) -> None:
    prog = supervise.Program(
        "kit-llc0", (sys.executable, "-m", "workers.launch", "--cpus", "0", "--",
                     "/v/bin/buildbot-worker", "start", "--nodaemon", "/w/a dir/100%"),
        REPO, tmp_path / "kit-llc0" / "supervised.log",
    )
    text = supervise.render_config(tmp_path, tmp_path / "s.sock", [prog])
    cp = configparser.ConfigParser()  # supervisord reads it the same way ('%%' is '%')
    cp.read_string(text)
    p = cp["program:kit-llc0"]
    assert shlex.split(p["command"])[-1] == "/w/a dir/100%"
    assert shlex.split(p["command"])[-3:-1] == ["start", "--nodaemon"]
    assert p["autorestart"] == "true" and p["autostart"] == "true"
    assert p["stopasgroup"] == "false" and p["killasgroup"] == "false"
    assert int(p["startsecs"]) > 0 and int(p["startretries"]) > 0
    assert cp["unix_http_server"]["file"] == str(tmp_path / "s.sock")
    assert cp["unix_http_server"]["chmod"] == "0700"
    sd = cp["supervisord"]
    for key in ("logfile", "pidfile", "childlogdir"):
        assert sd[key].startswith(str(tmp_path)), key
    with pytest.raises(supervise.SupervisorError, match="line break"):
        supervise.render_config(tmp_path, tmp_path / "s.sock", [
            supervise.Program("x", ("a\nb",), REPO, tmp_path / "l")])


def test_socket_path_fits_a_unix_socket(tmp_path: Path) -> None:
    assert supervise.Supervisor(tmp_path).sock == tmp_path / "supervisord.sock"
    deep = tmp_path / ("d" * 120)
    sock = supervise.Supervisor(deep).sock
    assert len(str(sock)) <= 100
    assert sock != supervise.Supervisor(tmp_path / ("e" * 120)).sock  # still one per service


def test_launcher_writes_the_pid_and_counts_starts(tmp_path: Path) -> None:
    pidfile, starts = tmp_path / "w" / "twistd.pid", tmp_path / "w" / "starts"
    pidfile.parent.mkdir()
    code = ("import os, sys; print(os.getpid(), sorted(os.sched_getaffinity(0)))")
    cpu = min(os.sched_getaffinity(0))
    for _ in range(3):
        proc = subprocess.run(
            [sys.executable, "-m", "workers.launch", "--cpus", str(cpu), "--pidfile", str(pidfile),
             "--starts-file", str(starts), "--", sys.executable, "-c", code],
            cwd=REPO, capture_output=True, text=True, check=True,
        )
        pid, aff = proc.stdout.split(" ", 1)
        # exec keeps the pid: the pid file names the command itself
        assert pidfile.read_text().strip() == pid and aff.strip() == f"[{cpu}]"
    assert [p for _, p in supervise.starts(starts)][-1] == int(pid)
    assert len(supervise.starts(starts)) == 3 and supervise.restarts(starts) == 2
    assert supervise.restarts(tmp_path / "none") == 0
    launch.record_start(starts)
    starts.write_text(starts.read_text() + "garbage\n")
    assert supervise.restarts(starts) == 3


# -- real processes -------------------------------------------------------------


def service_cmd(kit: ServiceKit, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=REPO,
                          env=kit.env, capture_output=True, text=True, timeout=180)


def connected(kit: ServiceKit, name: str) -> bool:
    return any(w["name"] == name and w.get("connected_to") for w in kit.api("workers")["workers"])


def procs_with(arg: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and arg in (p.info["cmdline"] or []):
                out.append(p)
        except psutil.Error:
            continue
    return out


@pytest.mark.integration
def test_a_killed_worker_is_restarted_reconnects_and_status_counts_it(tmp_path: Path) -> None:
    kit = ServiceKit(tmp_path, factory=STANDIN)
    try:
        kit.start()
        [spec] = kit.service.local_specs
        name = spec.name
        sv = kit.service.supervisor
        sv_pid = sv.pid()
        old = kit.worker_pids()[name]
        worker = psutil.Process(old)
        # supervisord watches the worker itself: its child, in the foreground
        assert worker.ppid() == sv_pid and "--nodaemon" in worker.cmdline()
        assert worker.cpu_affinity() == list(spec.pin_cpus)
        assert json.loads(service_cmd(kit, "status", "--json").stdout)["workers"][0]["restarts"] == 0

        t0 = time.monotonic()
        os.kill(old, signal.SIGKILL)
        new = kit.wait_for(lambda: (kit.worker_pids().get(name) or old) != old and
                           kit.worker_pids()[name], 30, "a new worker process")
        back = time.monotonic() - t0
        kit.wait_for(lambda: connected(kit, name), 30, f"{name} connected again")
        reconnected = time.monotonic() - t0
        proc = psutil.Process(new)
        assert proc.ppid() == sv_pid and proc.cpu_affinity() == list(spec.pin_cpus)
        assert int((spec.basedir / "twistd.pid").read_text()) == new
        # (it may connect before supervisord counts it as started: startsecs)
        kit.wait_for(lambda: kit.service.worker_state(spec).state == "RUNNING", 10, "RUNNING")
        st = json.loads(service_cmd(kit, "status", "--json").stdout)
        [w] = st["workers"]
        assert w["running"] and w["pid"] == new and w["connected"] and w["restarts"] == 1
        assert w["state"] == "RUNNING" and w["supervised"]
        assert w["pinned_to"] == format_cpulist(spec.pin_cpus)
        assert st["supervisor"]["running"] and st["supervisor"]["pid"] == sv_pid
        text = service_cmd(kit, "status").stdout
        assert f"supervisor: running, pid {sv_pid}" in text
        assert f"worker {name} " in text and f"running, pid {new}" in text
        assert "connected, restarts 1" in text
        # the restarted worker builds
        tree = kit.make_tree({"Makefile": "all:\n"})
        kit.push(tree, "after-restart")
        build = kit.wait_finished(kit.wait_build("after-restart", timeout=30)["buildid"], 60)
        assert build["results"] == kit.SUCCESS
        print(f"\nworker kill -9 -> new process: {back:.2f}s; -> connected: {reconnected:.2f}s")

        # make run again leaves it all running
        again = service_cmd(kit, "start")
        assert again.returncode == 0, again.stderr
        assert f"worker {name} already running (pid {new})" in again.stdout
        assert sv.pid() == sv_pid and kit.worker_pids()[name] == new

        # supervisord itself killed: the worker runs on unsupervised; make run
        # puts it back under a new supervisord, never two of it
        os.kill(sv_pid, signal.SIGKILL)
        kit.wait_for(lambda: sv.pid() is None, 10, "supervisord gone")
        st = json.loads(service_cmd(kit, "status", "--json").stdout)
        assert not st["supervisor"]["running"]
        assert st["workers"][0]["running"] and not st["workers"][0]["supervised"]
        assert "not supervised" in service_cmd(kit, "status").stdout
        again = service_cmd(kit, "start")
        assert again.returncode == 0, again.stderr
        assert f"worker {name} runs without its supervisor (pid {new})" in again.stdout
        assert sv.pid() not in (None, sv_pid)
        assert len(procs_with(str(spec.basedir))) == 1
        st = json.loads(service_cmd(kit, "status", "--json").stdout)
        assert st["workers"][0]["restarts"] == 0 and st["workers"][0]["connected"]

        stop = service_cmd(kit, "stop")
        assert stop.returncode == 0 and f"stopped {name}, master" in stop.stdout
        assert sv.pid() is None and procs_with(str(sv.conf)) == []
        assert procs_with(str(spec.basedir)) == []
        assert not sv.sock.exists()
    finally:
        kit.stop()
