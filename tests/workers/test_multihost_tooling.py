"""``python -m launcher start --workers-only``: the worker-host tooling's refusals and failures.

The happy path runs in tests/test_multihost.py (inside a network namespace).
Here, on loopback: a host with no listed worker, missing password files, and
a worker whose password the master does not accept - it starts, but is never
reported as connected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import settings as settings_mod
from launcher.service import Service, ServiceError
from tests.support.servicekit import REPO, ServiceKit

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

LIST = """\
mode = "list"
[[workers.list]]
name = "near-llc0"
host = "near"
llc_index = 0
cpus = "0"
[[workers.list]]
name = "far-llc0"
host = "far"
llc_index = 0
cpus = "1"
"""


def far_settings(root: Path, *, host: str, pb_port: int) -> Path:
    """A worker host's settings file (host ``host``) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "settings.toml"
    path.write_text(f"""
[master]
host = {json.dumps(host)}
basedir = {json.dumps(str(root / "no-master"))}
pb_port = {pb_port}
[web]
port = {pb_port + 1 if pb_port < 65535 else 1024}
users_file = {json.dumps(str(root / "secrets" / "web-users.json"))}
[hook]
password_file = {json.dumps(str(root / "secrets" / "hook"))}
[paths]
secrets = {json.dumps(str(root / "secrets"))}
workers = {json.dumps(str(root / "workers"))}
tree_store = {json.dumps(str(root / "trees"))}
kernel_cache = {json.dumps(str(root / "cache"))}
[workers]
keepalive = 30
{LIST}
""")
    return path


def test_refuses_without_own_workers_or_passwords(tmp_path: Path) -> None:
    svc = Service(settings_mod.load(far_settings(tmp_path / "a", host="elsewhere", pb_port=9)),
                  out=lambda m: None)
    with pytest.raises(ServiceError, match=r"no entry of workers.list .* host = 'elsewhere'"):
        svc.start_workers(timeout=5)

    s = settings_mod.load(far_settings(tmp_path / "b", host="far", pb_port=9))
    svc = Service(s, out=lambda m: None)
    with pytest.raises(ServiceError, match="copy them from the master host") as err:
        svc.start_workers(timeout=5)
    assert str(s.worker_password_file("far-llc0")) in str(err.value)
    # Nothing was generated or started: a made-up password would never match.
    assert not s.worker_password_file("far-llc0").exists()
    assert not (s.paths.workers / "far-llc0" / "twistd.pid").exists()


def test_wrong_password_is_not_connected_and_says_where_to_look(tmp_path: Path) -> None:
    with ServiceKit(tmp_path / "m", host="near", workers_toml=LIST) as kit:
        assert kit.worker_names == ["near-llc0"]
        path = far_settings(tmp_path / "far", host="far", pb_port=kit.pb_port)
        s = settings_mod.load(path)
        pw = s.worker_password_file("far-llc0")
        pw.parent.mkdir(parents=True)
        pw.write_text("not-what-the-master-has\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KTSTR_")}
        env["KTSTR_CI_SETTINGS"] = str(path)
        cmd = [sys.executable, "-m", "launcher"]
        try:
            res = subprocess.run([*cmd, "start", "--workers-only", "--timeout", "8"], env=env,
                                 cwd=REPO, capture_output=True, text=True, timeout=60)
            assert res.returncode == 1, res.stdout + res.stderr
            assert "workers not connected after 8s to 127.0.0.1:" in res.stderr
            assert "far-llc0" in res.stderr and "password" in res.stderr
            workers = {w["name"]: w for w in kit.api("workers")["workers"]}
            assert not workers["far-llc0"]["connected_to"]
            assert workers["near-llc0"]["connected_to"]
            # With the master's password (copied, as the guide says) it gets in.
            pw.write_text(kit.settings.worker_password_file("far-llc0").read_text())
            subprocess.run([*cmd, "stop", "--workers-only"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=60, check=True)
            res = subprocess.run([*cmd, "start", "--workers-only", "--timeout", "30"], env=env,
                                 cwd=REPO, capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stdout + res.stderr
            kit.wait_for(lambda: {w["name"]: w for w in kit.api("workers")["workers"]}
                         ["far-llc0"]["connected_to"], 20, "far-llc0 connected")
        finally:
            stop = subprocess.run([*cmd, "stop", "--workers-only"], env=env, cwd=REPO,
                                  capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0 and "far-llc0" in stop.stdout
        # The worker host's stop left the master alone.
        assert kit.service.master_state().running


def test_private_tmp_keeps_every_directory_under_tmp_reachable(tmp_path: Path) -> None:
    from tests.support.netns import private_tmp_binds

    host_tmp = Path("/tmp/h2")
    binds = private_tmp_binds(host_tmp, Path("/tmp/cc"), Path("/tmp/cc/.venv"), Path("/work/x"),
                              Path("/tmp/pytest-of-root/t1"))  # fmt: skip
    assert binds == [
        (Path("/tmp/cc"), host_tmp / "cc"),  # the checkout (and its venv inside it)
        (Path("/tmp/pytest-of-root/t1"), host_tmp / "pytest-of-root/t1"),
        (host_tmp, Path("/tmp")),  # last: covers /tmp
    ]
