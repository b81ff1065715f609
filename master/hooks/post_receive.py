"""post-receive: tell the master about each pushed branch at once (no polling).

For every updated branch (``refs/heads/NAME``) whose new tip is not all
zeros (a deletion starts nothing) and whose name matches the repository's
build patterns, POST one change to the master's ``/change_hook/base`` with
HTTP Basic auth (the hook user and the password file from the settings).

The push has already succeeded when this runs, so the hook never fails it:
every problem becomes one clear ``remote: ktstr-ci: ...`` line saying what
happened and what to do, and the exit status is 0.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from master.hooks import load_config

ZERO = "0" * 40


def say(msg: str) -> None:
    # git shows hook output to the pusher prefixed with "remote: ".
    print(f"ktstr-ci: {msg}", file=sys.stderr, flush=True)


def commit_info(sha: str) -> dict[str, str]:
    out = subprocess.run(
        ["git", "show", "-s", "--format=%an <%ae>%x00%cn <%ce>%x00%ct%x00%B", sha],
        check=True, capture_output=True, text=True,
    ).stdout
    author, committer, when, body = (out.split("\x00", 3) + ["", "", "", ""])[:4]
    return {"author": author, "committer": committer, "when_timestamp": when.strip(),
            "comments": body.strip()}


def post_change(cfg: dict[str, Any], branch: str, sha: str) -> str:
    """POST one change; returns the master's answer or raises urllib errors."""
    password = Path(cfg["password_file"]).read_text().strip()
    fields = {
        "revision": sha,
        "branch": branch,
        "repository": cfg["repository"],
        "project": cfg["project"],
        "category": "push",
        **commit_info(sha),
    }
    data = urllib.parse.urlencode(fields).encode()
    req = urllib.request.Request(cfg["change_hook_url"], data=data, method="POST")
    token = base64.b64encode(f"{cfg['user']}:{password}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(req, timeout=float(cfg.get("timeout", 10))) as resp:
        return resp.read().decode(errors="replace").strip()


def handle(cfg: dict[str, Any], old: str, new: str, ref: str) -> None:
    if not ref.startswith("refs/heads/"):
        return  # tags are stored, not built
    branch = ref[len("refs/heads/") :]
    if new == ZERO:
        say(f"branch {branch} deleted; nothing to build")
        return
    patterns = cfg.get("branches") or [".*"]
    if not any(re.fullmatch(p, branch) for p in patterns):
        say(f"branch {branch} is stored but not built: it matches none of the build "
            f"patterns {patterns} (repos.branches in the settings)")
        return
    url = cfg["change_hook_url"]
    try:
        post_change(cfg, branch, new)
    except FileNotFoundError:
        say(f"could not notify CI: the hook password file {cfg['password_file']} is missing; "
            "run `make run` to generate it, then force a build of "
            f"{branch} in {cfg.get('web_url', 'the web UI')}")
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            say(f"could not notify CI: the master refused the hook's credentials (HTTP 401). "
                f"The password in {cfg['password_file']} must be the one the master started "
                "with; restart the master (make stop; make run) after changing it")
        else:
            detail = exc.read().decode(errors="replace").strip()[:200]
            say(f"could not notify CI: the master answered HTTP {exc.code} {detail}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        say(f"could not notify CI: the master at {url} is not reachable ({reason}); "
            f"the push is stored - start the service with `make run` and force a build of "
            f"{branch} in the web UI")
    except subprocess.CalledProcessError as exc:
        say(f"could not notify CI: git show {new} failed: {exc.stderr.strip()}")
    else:
        say(f"build of {branch} at {new[:12]} requested: {cfg.get('web_url', '')}#/builders")


def main(lines: list[str] | None = None) -> int:
    try:
        cfg = load_config()
    except (OSError, ValueError) as exc:
        say(f"could not notify CI: no usable hook config ({exc}); run `make run` to reinstall "
            "the hooks")
        return 0
    if lines is None:
        lines = sys.stdin.read().splitlines()
    for line in lines:
        parts = line.split()
        if len(parts) == 3:
            handle(cfg, *parts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
