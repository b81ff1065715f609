"""GitHub and GitLab stand-ins: a service kit with external repositories, upstream commits, signed webhook payloads."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import settings as settings_mod
from tests.support.paths import PAYLOADS
from tests.support.servicekit import ServiceKit

GH_PROJECT = "sched-ext/linux"


GL_PROJECT = "kernel/sched-ext-linux"


class ExternalKit(ServiceKit):
    """ServiceKit with the external repositories' secrets and the master's log at hand."""

    @property
    def master_log(self) -> str:
        return (self.settings.master.basedir / "twistd.log").read_text(errors="replace")

    def secret(self, service: str) -> str:
        hook = next(h for h in self.settings.external.webhooks if h.service == service)
        value = settings_mod.read_secret(hook.secret_file)
        assert value, f"{hook.secret_file} was not generated"
        return value

    def post_hook(self, dialect: str, body: bytes, headers: dict[str, str], *,
                  auth: bool = True) -> tuple[int, str]:
        req = urllib.request.Request(f"{self.web_url}change_hook/{dialect}", data=body,
                                     method="POST", headers=headers)
        if auth:
            password = self.hook_password_file.read_text().strip()
            token = base64.b64encode(f"hook:{password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def buildsets(self) -> list[dict]:
        return self.api("buildsets")["buildsets"]


def git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="Up Stream", GIT_AUTHOR_EMAIL="up@example.com",
               GIT_COMMITTER_NAME="Up Stream", GIT_COMMITTER_EMAIL="up@example.com",
               GIT_CONFIG_NOSYSTEM="1", HOME=str(cwd))
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def upstream_commit(work: Path, upstream: Path, branch: str, message: str) -> str:
    """Commit in the upstream work tree and push it to ``branch`` of the bare repo."""
    (work / "Makefile").write_text(f"# {message}\nall:\n\ttrue\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", message)
    git(work, "push", "-q", "--force", str(upstream), f"HEAD:refs/heads/{branch}")
    return git(work, "rev-parse", "HEAD")


def new_sha() -> str:
    return secrets.token_hex(20)


def github_payload(branch: str, sha: str, *, ref: str | None = None) -> bytes:
    p = json.loads((PAYLOADS / "github-push.json").read_text())
    p["ref"] = ref or f"refs/heads/{branch}"
    p["after"] = p["head_commit"]["id"] = p["commits"][-1]["id"] = sha
    return json.dumps(p).encode()


def gitlab_payload(branch: str, sha: str, *, kind: str = "push") -> bytes:
    p = json.loads((PAYLOADS / "gitlab-push.json").read_text())
    p["object_kind"] = p["event_name"] = kind
    p["ref"] = f"refs/{'tags' if kind == 'tag_push' else 'heads'}/{branch}"
    p["after"] = p["checkout_sha"] = p["commits"][-1]["id"] = sha
    return json.dumps(p).encode()


def github_headers(body: bytes, secret: str | None, *, sha1: bool = True,
                   sha256: bool = True, event: str = "push") -> dict[str, str]:
    h = {"Content-Type": "application/json", "X-GitHub-Event": event,
         "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
         "User-Agent": "GitHub-Hookshot/044aadd"}
    if secret is not None:
        if sha256:
            h["X-Hub-Signature-256"] = "sha256=" + hmac.new(
                secret.encode(), body, hashlib.sha256).hexdigest()
        if sha1:
            h["X-Hub-Signature"] = "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    return h


def gitlab_headers(token: str | None, event: str = "Push Hook") -> dict[str, str]:
    h = {"Content-Type": "application/json", "X-Gitlab-Event": event,
         "X-Gitlab-Instance": "https://gitlab.example.com", "User-Agent": "GitLab/17.0.0"}
    if token is not None:
        h["X-Gitlab-Token"] = token
    return h
