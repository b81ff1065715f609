"""`make run` / `make stop` / `make status` (python -m launcher) on a temp var dir.

Runs the real command with the checkout's master.cfg (the real factory and
records service), settings pointing every path into the temp dir and free ports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import settings
from tests.support.paths import REPO
from tests.support.servicekit import ServiceKit

pytestmark = pytest.mark.integration


def service(kit: ServiceKit, action: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "launcher", action, *extra],
        cwd=REPO, env=kit.env, capture_output=True, text=True, timeout=180,
    )


def test_start_stop_start(tmp_path: Path) -> None:
    kit = ServiceKit(tmp_path)  # only its settings file and environment
    try:
        first = service(kit, "start")
        assert first.returncode == 0, first.stdout + first.stderr
        out = first.stdout
        assert "ktstr-ci is running." in out
        assert f"web UI:      http://localhost:{kit.web_port}/" in out
        assert f"git push {kit.repo_path} HEAD:refs/heads/my-branch" in out
        login = kit.service.admin_login()
        assert login is not None and f"admin login: admin / {login[1]}" in out
        assert str(kit.root / "master" / "twistd.log") in out
        name = kit.worker_names[0]
        assert f"{name} (CPUs " in out
        pids = kit.worker_pids()
        master_pid = kit.service.master_state().pid
        secret = kit.hook_password_file.read_text()
        assert (kit.repo_path / "hooks" / "post-receive").exists()

        # again: nothing restarted, nothing regenerated
        again = service(kit, "start")
        assert again.returncode == 0, again.stderr
        assert f"master already running (pid {master_pid})" in again.stdout
        assert f"worker {name} already running" in again.stdout
        assert kit.worker_pids() == pids
        assert kit.hook_password_file.read_text() == secret
        assert kit.service.admin_login() == login

        st = service(kit, "status", "--json")
        status = json.loads(st.stdout)
        assert status["master"]["running"] and status["master"]["answering"]
        [w] = status["workers"]
        assert w["running"] and w["connected"] and w["pid"] == pids[name]
        assert w["supervised"] and w["restarts"] == 0
        spec = kit.service.local_specs[0]
        assert psutil.Process(pids[name]).cpu_affinity() == list(spec.pin_cpus)
        # the worker is supervisord's child (it restarts it if it dies)
        sv_pid = status["supervisor"]["pid"]
        assert status["supervisor"]["running"] and psutil.Process(pids[name]).ppid() == sv_pid
        text = service(kit, "status").stdout
        assert text.startswith("master: running, pid ")
        assert f"supervisor: running, pid {sv_pid}" in text and "restarts 0" in text

        stop = service(kit, "stop")
        assert stop.returncode == 0 and f"stopped {name}, master" in stop.stdout
        assert not psutil.pid_exists(master_pid) or psutil.Process(master_pid).status() == "zombie"
        assert kit.service.master_state().running is False
        # nothing of the workers' side is left: no worker, no supervisord
        for pid in (pids[name], sv_pid):
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        assert kit.service.supervisor.pid() is None
        stop2 = service(kit, "stop")
        assert stop2.returncode == 0 and "stopped nothing (not running)" in stop2.stdout
        down = json.loads(service(kit, "status", "--json").stdout)
        assert not down["master"]["running"] and not down["workers"][0]["running"]
        assert not down["supervisor"]["running"]

        third = service(kit, "start")
        assert third.returncode == 0, third.stdout + third.stderr
        assert kit.worker_pids()[name] != pids[name]
        assert kit.hook_password_file.read_text() == secret
        assert kit.service.admin_login() == login
    finally:
        kit.stop()


def test_bad_settings_are_reported(tmp_path: Path) -> None:
    kit = ServiceKit(tmp_path)
    kit.settings_file.write_text("[web]\nport = 0\n")
    proc = service(kit, "start")
    assert proc.returncode == 1
    assert "ktstr-ci: error: settings file" in proc.stderr and "web.port" in proc.stderr
    assert not (kit.root / "master").exists()


def test_local_settings_stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from launcher.actions import ensure_local_settings

    monkeypatch.delenv(settings.ENV_VAR, raising=False)
    ensure_local_settings(tmp_path)
    stub = tmp_path / "var" / "settings.toml"
    assert stub.read_text().startswith("# ktstr-ci settings for this checkout")
    stub.write_text("[web]\nport = 8123\n")
    ensure_local_settings(tmp_path)  # an existing file is never overwritten
    assert settings.load(root=tmp_path).web.port == 8123
