"""A change-hook receiver and git helpers for the push hooks' tests."""

from __future__ import annotations

import base64
import os
import subprocess
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from master import hooks

PASSWORD = "s3cret-hook"


class Receiver:
    """Records change-hook POSTs; answers 401 unless the Basic auth matches."""

    def __init__(self) -> None:
        self.posts: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                want = "Basic " + base64.b64encode(f"hook:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != want:
                    self.send_response(401)
                    self.end_headers()
                    return
                receiver.posts.append(
                    {"path": self.path, **{k: v[0] for k, v in urllib.parse.parse_qs(body).items()}}
                )
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"1 change found")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, GIT_AUTHOR_NAME="Ada", GIT_AUTHOR_EMAIL="ada@example.com",
               GIT_COMMITTER_NAME="Ada", GIT_COMMITTER_EMAIL="ada@example.com",
               GIT_CONFIG_NOSYSTEM="1", HOME=str(cwd))
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          check=check)


def push(work: Path, bare: Path, refspec: str) -> subprocess.CompletedProcess:
    return git(work, "push", str(bare), refspec, check=False)


def hooked_repo(tmp_path: Path, hook_port: int, *, timeout: float = 5) -> tuple[Path, Path, dict, Path]:
    """A bare repository with the ktstr-ci hooks posting to 127.0.0.1:``hook_port``, and a
    work tree with one commit on main: ``(bare, work, hook config, password file)``."""
    bare = tmp_path / "linux.git"
    assert hooks.ensure_bare_repo(bare)
    pw = tmp_path / "hook-password"
    pw.write_text(PASSWORD + "\n")
    cfg = {
        "repository": str(bare), "project": "linux", "branches": [".*"],
        "change_hook_url": f"http://127.0.0.1:{hook_port}/change_hook/base",
        "web_url": "http://localhost:8010/", "user": "hook", "password_file": str(pw),
        "timeout": timeout,
    }
    hooks.install(bare, cfg)
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "Makefile").write_text("all:\n")
    git(work, "add", "Makefile")
    git(work, "commit", "-q", "-m", "first line\n\nbody text")
    return bare, work, cfg, pw
