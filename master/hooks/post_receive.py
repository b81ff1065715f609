"""post-receive: tell the master about each pushed branch at once (no polling).

For every updated branch (``refs/heads/NAME``) whose new tip is not all
zeros (a deletion starts nothing) and whose name matches the repository's
build patterns, POST one change to the master's ``/change_hook/base`` with
HTTP Basic auth (the hook user and the password file from the settings).

No push is lost when the master is down: a change the master did not take
(connection refused or broken, a timeout, an HTTP 5xx answer, the password
file missing) is written to the repository's push spool
(:mod:`master.hooks.spool`), and the master adds it when it is back
(:mod:`master.push_spool`). An HTTP 4xx answer is a refusal, not an outage:
it is reported and not spooled (retrying would be refused again). While a
branch has a change queued, newer pushes of that branch queue behind it
instead of overtaking it, so the newest tip is always the one built last.

A POST whose answer was lost (the master stored the change, then the
connection broke or timed out) is spooled as ``delivery: unknown``; the
master skips it when the branch's newest change already has that revision,
and otherwise the push scheduler supersedes the queued duplicate.

The push has already succeeded when this runs, so the hook never fails it:
every problem becomes one clear ``remote: ktstr-ci: ...`` line saying what
happened and what to do, and the exit status is 0.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from master.hooks import load_config, spool

ZERO = spool.ZERO


def say(msg: str) -> None:
    # git shows hook output to the pusher prefixed with "remote: ".
    try:
        print(f"ktstr-ci: {msg}", file=sys.stderr, flush=True)
    except OSError:
        pass  # the pusher went away (Ctrl-C): the remaining branches are still handled


def commit_info(sha: str) -> dict[str, str]:
    out = subprocess.run(
        ["git", "show", "-s", "--format=%an <%ae>%x00%cn <%ce>%x00%ct%x00%B", sha],
        check=True, capture_output=True, text=True,
    ).stdout
    author, committer, when, body = (out.split("\x00", 3) + ["", "", "", ""])[:4]
    return {"author": author, "committer": committer, "when_timestamp": when.strip(),
            "comments": body.strip()}


def change_fields(cfg: dict[str, Any], branch: str, sha: str) -> dict[str, str]:
    """The change the hook posts (and spools) for ``branch`` at ``sha``."""
    return {
        "revision": sha,
        "branch": branch,
        "repository": cfg["repository"],
        "project": cfg["project"],
        "category": "push",
        **commit_info(sha),
    }


def post_change(cfg: dict[str, Any], fields: dict[str, str]) -> str:
    """POST one change; returns the master's answer or raises urllib errors."""
    password = Path(cfg["password_file"]).read_text().strip()
    data = urllib.parse.urlencode(fields).encode()
    req = urllib.request.Request(cfg["change_hook_url"], data=data, method="POST")
    token = base64.b64encode(f"{cfg['user']}:{password}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(req, timeout=float(cfg.get("timeout", 10))) as resp:
        return resp.read().decode(errors="replace").strip()


def _refused(exc: BaseException) -> bool:
    """True when the request certainly never reached the master (nothing was stored)."""
    reason = getattr(exc, "reason", exc)
    return isinstance(reason, ConnectionRefusedError | socket.gaierror)


class Hook:
    """One run of the hook: the repository's config and its spool."""

    def __init__(self, cfg: dict[str, Any], gitdir: Path) -> None:
        self.cfg = cfg
        self.spooldir = spool.spool_dir(gitdir)
        try:
            self.queued = spool.pending_branches(self.spooldir)
        except OSError:
            self.queued = set()
        self.seq = 0

    def queue(self, fields: dict[str, str], *, reason: str, delivery: str) -> str | None:
        """Spool one change; returns None, or why it could not be spooled."""
        try:
            spool.write(self.spooldir, fields, reason=reason, delivery=delivery, seq=self.seq)
        except OSError as exc:
            return str(exc)
        self.seq += 1
        self.queued.add(fields["branch"])
        return None

    def queued_msg(self, branch: str, why: str) -> str:
        return (f"{why}; the push of {branch} is queued in {self.spooldir} and builds when "
                "the master is back (`make run` starts it)")

    def not_queued(self, branch: str, why: str, err: str) -> None:
        say(f"could not notify CI: {why}, and could not queue the push ({err}); force a build "
            f"of {branch} in {self.cfg.get('web_url', 'the web UI')}")

    def handle(self, old: str, new: str, ref: str) -> None:
        if not ref.startswith("refs/heads/"):
            return  # tags are stored, not built
        branch = ref[len("refs/heads/") :]
        if new == ZERO:
            if branch in self.queued:
                # The queued push of this branch must not build after the branch is gone.
                err = self.queue({"branch": branch, "revision": ZERO,
                                  "repository": self.cfg["repository"]},
                                 reason="branch deleted", delivery=spool.DELIVERY_FAILED)
                if err is None:
                    say(f"branch {branch} deleted; its queued build is dropped")
                    return
                say(f"branch {branch} deleted, but its queued build could not be dropped "
                    f"({err}); stop it in the web UI when it starts")
                return
            say(f"branch {branch} deleted; nothing to build")
            return
        patterns = self.cfg.get("branches") or [".*"]
        if not any(re.fullmatch(p, branch) for p in patterns):
            say(f"branch {branch} is stored but not built: it matches none of the build "
                f"patterns {patterns} (repos.branches in the settings)")
            return
        try:
            fields = change_fields(self.cfg, branch, new)
        except subprocess.CalledProcessError as exc:
            say(f"could not notify CI: git show {new} failed: {exc.stderr.strip()}")
            return
        if branch in self.queued:
            # Posting now would build this tip before the older queued one.
            why = "an earlier push of this branch is still queued for the master"
            err = self.queue(fields, reason=why, delivery=spool.DELIVERY_FAILED)
            if err is not None:
                self.not_queued(branch, why, err)
                return
            say(f"{why}; this push of {branch} at {new[:12]} is queued behind it in "
                f"{self.spooldir} and builds after it (within seconds while the master runs)")
            return
        self.deliver(branch, new, fields)

    def deliver(self, branch: str, new: str, fields: dict[str, str]) -> None:
        url = self.cfg["change_hook_url"]
        try:
            post_change(self.cfg, fields)
        except FileNotFoundError:
            why = f"the hook password file {self.cfg['password_file']} is missing"
            self.spool_or_say(branch, fields, why, spool.DELIVERY_FAILED)
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                say("could not notify CI: the master refused the hook's credentials (HTTP 401). "
                    f"The password in {self.cfg['password_file']} must be the one the master "
                    "started with; restart the master (make stop; make run) after changing it")
            elif exc.code >= 500:
                detail = exc.read().decode(errors="replace").strip()[:200]
                why = f"the master answered HTTP {exc.code} {detail}".rstrip()
                self.spool_or_say(branch, fields, why, spool.DELIVERY_FAILED)
            else:
                detail = exc.read().decode(errors="replace").strip()[:200]
                say(f"could not notify CI: the master answered HTTP {exc.code} {detail}")
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc) or type(exc).__name__
            why = f"the master at {url} is not reachable ({reason})"
            if _refused(exc):
                self.spool_or_say(branch, fields, why, spool.DELIVERY_FAILED)
            else:
                why = f"the master at {url} did not answer ({reason}); it may have the push"
                self.spool_or_say(branch, fields, why, spool.DELIVERY_UNKNOWN)
        else:
            say(f"build of {branch} at {new[:12]} requested: "
                f"{self.cfg.get('web_url', '')}#/builders")

    def spool_or_say(self, branch: str, fields: dict[str, str], why: str, delivery: str) -> None:
        err = self.queue(fields, reason=why, delivery=delivery)
        if err is not None:
            self.not_queued(branch, why, err)
        else:
            say(self.queued_msg(branch, why))


def main(lines: list[str] | None = None) -> int:
    gitdir = Path(os.environ.get("GIT_DIR", ".")).resolve()
    try:
        cfg = load_config(gitdir)
    except (OSError, ValueError) as exc:
        say(f"could not notify CI: no usable hook config ({exc}); run `make run` to reinstall "
            "the hooks")
        return 0
    if lines is None:
        lines = sys.stdin.read().splitlines()
    hook = Hook(cfg, gitdir)
    for line in lines:
        parts = line.split()
        if len(parts) == 3:
            hook.handle(*parts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
