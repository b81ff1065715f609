"""Settings files for the external-repository tests: a minimal service plus [external]."""

from __future__ import annotations

import json
from pathlib import Path

import settings

GOOD_WEBHOOKS = """
[[external.webhooks]]
repo = "gh"
service = "github"
project = "sched-ext/linux"

[[external.webhooks]]
repo = "gh"
service = "gitlab"
project = "kernel/sched-ext-linux"
secret_file = "tokens/gitlab"
strict = false
"""


def write_settings(tmp_path: Path, external_toml: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(f"""
[paths]
secrets = {json.dumps(str(tmp_path / "secrets"))}
[web]
users_file = {json.dumps(str(tmp_path / "secrets" / "web-users.json"))}
[hook]
password_file = {json.dumps(str(tmp_path / "secrets" / "hook-password"))}
[databases]
buildbot = "sqlite:///{tmp_path / "state.sqlite"}"
records = "sqlite:///{tmp_path / "records.sqlite"}"
[[repos]]
name = "linux"
url = "var/linux.git"
hosted = true
[[repos]]
name = "gh"
url = "https://github.com/sched-ext/linux.git"
profiles = ["tiny"]
{external_toml}
""")
    return path


def load(tmp_path: Path, external_toml: str) -> settings.Settings:
    return settings.load(write_settings(tmp_path, external_toml), root=tmp_path)
