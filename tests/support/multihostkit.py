"""A second host in a network namespace: its settings, its pinned workers, its own cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ktstr_steps.paths import REPO_ROOT
from tests.support.netns import NetnsHost, private_tmp_binds
from tests.support.servicekit import REPO, ServiceKit, write_fake_sysfs

HOST2_WORKERS = ("host2-llc0", "host2-llc1")


WORKERS_TOML = """\
mode = "list"
[[workers.list]]
name = "host1-llc0"
host = "host1"
llc_index = 0
cpus = "0-1"
[[workers.list]]
name = "host2-llc0"
host = "host2"
llc_index = 0
cpus = "0"
[[workers.list]]
name = "host2-llc1"
host = "host2"
llc_index = 1
cpus = "1"
"""


class Host2:
    """The second host's files, settings and environment (what its admin would set up)."""

    def __init__(self, root: Path, kit: ServiceKit, net: NetnsHost) -> None:
        self.root = root
        self.kit = kit
        self.net = net
        self.cache = root / "cache"
        self.trees = root / "trees"
        self.tmp = root / "tmp"
        self.run_dir = root / "run"
        self.secrets = root / "secrets"
        for d in (self.cache, self.trees, self.tmp, self.run_dir, self.secrets / "workers"):
            d.mkdir(parents=True, exist_ok=True)
        # The master generated every listed worker's password; an admin copies
        # host 2's to host 2.
        for name in HOST2_WORKERS:
            shutil.copy2(kit.settings.worker_password_file(name),
                         self.secrets / "workers" / f"{name}.pass")
        self.settings_file = root / "settings.toml"
        self.settings_file.write_text(f"""
[master]
host = "host2"
basedir = {json.dumps(str(root / "no-master-here"))}
pb_bind = {json.dumps(net.host_addr)}
pb_port = {kit.pb_port}
[web]
users_file = {json.dumps(str(root / "secrets" / "web-users.json"))}
[hook]
password_file = {json.dumps(str(root / "secrets" / "hook-password"))}
[paths]
secrets = {json.dumps(str(self.secrets))}
workers = {json.dumps(str(root / "workers"))}
tree_store = {json.dumps(str(self.trees))}
kernel_cache = {json.dumps(str(self.cache))}
[workers]
keepalive = 30
{WORKERS_TOML}
[[repos]]
name = "linux"
url = {json.dumps(str(kit.repo_path))}
""")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("KTSTR_", "PYTEST_")) and k != "VIRTUAL_ENV"}
        env.update({
            "KTSTR_CI_SETTINGS": str(self.settings_file),
            "KTSTR_SYSFS_ROOT": str(write_fake_sysfs(root / "sysfs", [[0], [1]])),
            "KTSTR_CI_RUN_DIR": str(self.run_dir),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        })
        self.env = env
        # Host 2's own /tmp, and its tree store at the path the master hands
        # every worker (worker property tree_store; see docs/scale-out.md).
        self.binds = [
            *private_tmp_binds(self.tmp, root.parent, REPO_ROOT),
            (self.trees, kit.tree_store),
        ]

    def service(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "launcher", *args]
        return subprocess.run(self.net.argv(argv, binds=self.binds), env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)

    def worker_pid(self, name: str) -> int:
        return int((self.root / "workers" / name / "twistd.pid").read_text())
