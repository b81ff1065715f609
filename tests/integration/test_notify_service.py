"""Commit statuses, mail and JSON POSTs on a real master (servicekit).

One master for the module with a stand-in factory whose verdict a test picks
per branch (``fail-branches`` next to the kit's hold file), so a branch can go
green → red → green in seconds. Loopback servers stand in for the GitHub API,
the GitLab API and a generic JSON receiver (one HTTP server, told apart by
path prefix); aiosmtpd is the mail relay. Deliveries come in as signed
webhooks (GitHub, GitLab), a poller's new upstream commit and pushes to the
hosted bare repository.
"""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.support.externalkit import (
    GH_PROJECT,
    GL_PROJECT,
    ExternalKit,
    git,
    github_headers,
    github_payload,
    gitlab_headers,
    gitlab_payload,
    new_sha,
    upstream_commit,
)
from tests.support.servicekit import free_port

pytestmark = pytest.mark.integration

GH_TOKEN = "ghp_loopback0123456789"
GL_TOKEN = "glpat-loopback0123456789"
GL_PROJECT_ID = 4242


def verdict_factory(*, repourl: str, profile: str, **_: Any):
    """Sets ``kernel_outcome`` (``failed`` for a branch listed in ``fail-branches``, else
    ``cached``) and fails the build when it is ``failed``."""
    from buildbot.plugins import steps, util
    from buildbot.process.factory import BuildFactory

    f = BuildFactory()
    f.addStep(steps.SetPropertyFromCommand(
        name="verdict", property="kernel_outcome", logEnviron=False,
        command=[sys.executable, "-c",
                 "import os, sys; p = os.path.join(os.path.dirname(os.environ['KIT_HOLD_FILE']),"
                 " 'fail-branches'); bad = open(p).read().split() if os.path.exists(p) else [];"
                 " print('failed' if sys.argv[1] in bad else 'cached')",
                 util.Property("branch", default="")],
    ))
    f.addStep(steps.ShellCommand(
        name="kernel", logEnviron=False,
        command=[sys.executable, "-c", "import sys; sys.exit(sys.argv[1] == 'failed')",
                 util.Property("kernel_outcome")],
    ))
    return f


class Recorder(BaseHTTPRequestHandler):
    """Answers like the APIs it stands in for and records every request."""

    requests: list[dict[str, Any]] = []
    # Keep-alive like the real APIs: Buildbot's HTTP client reuses its connections.
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _record(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        entry = {"method": self.command, "path": self.path,
                 "headers": {k.lower(): v for k, v in self.headers.items()},
                 "json": json.loads(raw) if raw else None}
        type(self).requests.append(entry)
        return entry

    def _answer(self, code: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._record()
        if self.path.startswith("/gitlab/api/v4/projects/"):
            self._answer(200, {"id": GL_PROJECT_ID})
        else:
            self._answer(404, {"message": "Not Found"})

    def do_POST(self) -> None:
        self._record()
        self._answer(201 if not self.path.startswith("/post/") else 200, {})


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content)
        msg["X-Rcpt-To"] = ",".join(envelope.rcpt_tos)
        self.messages.append(msg)
        return "250 OK"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("notify")
    Recorder.requests = []
    http = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{http.server_address[1]}"
    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    secrets = tmp / "tokens"
    secrets.mkdir()
    for name, token in (("github", GH_TOKEN), ("gitlab", GL_TOKEN)):
        (secrets / f"{name}.token").write_text(token + "\n")
        os.chmod(secrets / f"{name}.token", 0o600)
    mirrors = {}
    for name in ("gh", "gl"):
        mirrors[name] = tmp / f"{name}-mirror.git"
        subprocess.run(["git", "init", "-q", "--bare", str(mirrors[name])], check=True)
    upstream = tmp / "upstream.git"
    work = tmp / "upstream-work"
    subprocess.run(["git", "init", "-q", "--bare", str(upstream)], check=True)
    work.mkdir()
    git(work, "init", "-q", "-b", "for-next")
    upstream_commit(work, upstream, "for-next", "upstream base")
    extra = f"""
[[repos]]
name = "gh"
url = {json.dumps(str(mirrors["gh"]))}
profiles = ["tiny"]

[[repos]]
name = "gl"
url = {json.dumps(str(mirrors["gl"]))}
profiles = ["tiny"]

[[external.webhooks]]
repo = "gh"
service = "github"
project = "{GH_PROJECT}"

[[external.webhooks]]
repo = "gl"
service = "gitlab"
project = "{GL_PROJECT}"

[[external.pollers]]
name = "up"
url = "file://{upstream}"
branches = ["for-next"]
interval = 1
profiles = ["tiny"]
service = "github"
project = "sched-ext/up"

[notify]
mail_to = ["kernel-team@example.org", "maintainer@example.org"]
mail_from = "ktstr-ci@ci.example.org"
smtp_host = "127.0.0.1"
smtp_port = {smtp.port}
post_urls = ["{api}/post/builds"]
"""
    extra += f"""
[external]
github_token_file = {json.dumps(str(secrets / "github.token"))}
github_api = "{api}/github"
gitlab_token_file = {json.dumps(str(secrets / "gitlab.token"))}
gitlab_api = "{api}/gitlab"
status_context = "ktstr-ci"
"""
    kit = ExternalKit(tmp, extra_toml=extra, factory="tests.integration.test_notify_service:verdict_factory")
    try:
        with kit:
            yield {"kit": kit, "mailbox": mailbox, "api": api, "upstream": upstream,
                   "work": work}
    finally:
        smtp.stop()
        http.shutdown()


def requests_to(prefix: str) -> list[dict[str, Any]]:
    return [r for r in Recorder.requests if r["path"].startswith(prefix)]


def wait(predicate: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; requests: {Recorder.requests}")
        time.sleep(0.1)


def test_github_webhook_build_reports_pending_then_success(env: dict[str, Any]) -> None:
    kit: ExternalKit = env["kit"]
    sha = new_sha()
    body = github_payload("feature", sha)
    code, text = kit.post_hook("github", body, github_headers(body, kit.secret("github")))
    assert code == 200, text
    path = f"/github/repos/{GH_PROJECT}/statuses/{sha}"
    posts = wait(lambda: [r for r in requests_to(path) if r["json"]["state"] != "pending"]
                 and requests_to(path), "the GitHub statuses")
    build = kit.wait_build("feature", finished=True)
    url = f"{kit.settings.web_url}#/builders/{build['builderid']}/builds/{build['number']}"
    assert [(p["method"], p["path"], p["headers"]["authorization"]) for p in posts] == [
        ("POST", path, f"token {GH_TOKEN}")] * 2
    assert all(p["headers"]["content-type"].startswith("application/json") for p in posts)
    assert [p["json"] for p in posts] == [
        {"state": "pending", "description": "ktstr-ci: build started", "target_url": url,
         "context": "ktstr-ci/tiny"},
        {"state": "success", "description": "success: kernel cached (build successful)",
         "target_url": url, "context": "ktstr-ci/tiny"},
    ]


def test_poller_build_reports_on_the_pollers_project(env: dict[str, Any]) -> None:
    kit: ExternalKit = env["kit"]
    sha = upstream_commit(env["work"], env["upstream"], "for-next", "upstream change")
    path = f"/github/repos/sched-ext/up/statuses/{sha}"
    posts = wait(lambda: len(requests_to(path)) >= 2 and requests_to(path),
                 "the poller build's statuses", timeout=90)
    assert [p["json"]["state"] for p in posts] == ["pending", "success"]
    assert all(p["headers"]["authorization"] == f"token {GH_TOKEN}" for p in posts)
    assert posts[1]["json"]["context"] == "ktstr-ci/tiny"
    build = kit.wait_build("for-next", finished=True)
    assert build["properties"]["buildername"][0] == "up-tiny"


def test_gitlab_webhook_failure_is_reported_failed(env: dict[str, Any]) -> None:
    kit: ExternalKit = env["kit"]
    (kit.hold_file.parent / "fail-branches").write_text("gl-broken\n")
    sha = new_sha()
    body = gitlab_payload("gl-broken", sha)
    code, text = kit.post_hook("gitlab", body, gitlab_headers(kit.secret("gitlab")))
    assert code == 200, text
    path = f"/gitlab/api/v4/projects/{GL_PROJECT_ID}/statuses/{sha}"
    posts = wait(lambda: len(requests_to(path)) >= 2 and requests_to(path), "the GitLab statuses")
    lookups = requests_to("/gitlab/api/v4/projects/kernel%2Fsched-ext-linux")
    assert lookups and lookups[0]["method"] == "GET"
    assert lookups[0]["headers"]["private-token"] == GL_TOKEN
    assert all(p["headers"]["private-token"] == GL_TOKEN for p in posts)
    build = kit.wait_build("gl-broken", finished=True)
    url = f"{kit.settings.web_url}#/builders/{build['builderid']}/builds/{build['number']}"
    assert [p["method"] for p in posts] == ["POST", "POST"]
    assert posts[0]["json"] == {"state": "running", "ref": "gl-broken", "target_url": url,
                                "description": "ktstr-ci: build started", "name": "ktstr-ci/tiny"}
    end = posts[1]["json"]
    # The description ends with the build's own summary (the failed command line).
    assert end["description"].startswith("failure: kernel failed (")
    assert end == {"state": "failed", "ref": "gl-broken", "target_url": url,
                   "description": end["description"], "name": "ktstr-ci/tiny"}


def test_local_pushes_post_json_and_mail_on_turns_only(env: dict[str, Any]) -> None:
    kit: ExternalKit = env["kit"]
    mailbox: Mailbox = env["mailbox"]
    fail = kit.hold_file.parent / "fail-branches"
    fail.write_text("")
    tree = kit.make_tree({"Makefile": "all:\n"})
    last = 0
    verdicts = []
    for broken in (False, True, True, False):
        fail.write_text("topic\n" if broken else "")
        kit.commit(tree, {"Makefile": f"# {time.time()}\nall:\n"})
        kit.push(tree, "topic")
        build = kit.wait_build("topic", finished=True, after_buildid=last, timeout=90)
        last = build["buildid"]
        verdicts.append(build["results"])
    assert verdicts == [kit.SUCCESS, kit.FAILURE, kit.FAILURE, kit.SUCCESS]

    # Green first (no mail), red (mail), still red (none), green again (mail).
    def topic_mails() -> list[Message]:
        return [m for m in mailbox.messages if m["Subject"].startswith("ktstr-ci: topic ")]

    wait(lambda: len(topic_mails()) >= 2, "two mails about topic")
    time.sleep(2)  # a third mail would be a bug
    red, green = topic_mails()
    assert red["Subject"].startswith("ktstr-ci: topic is red (linux-tiny #")
    assert green["Subject"].startswith("ktstr-ci: topic is green (linux-tiny #")
    assert red["From"] == "ktstr-ci@ci.example.org"
    assert set(red["X-Rcpt-To"].split(",")) == {"kernel-team@example.org",
                                               "maintainer@example.org"}
    text = red.get_payload(decode=True).decode()
    assert "The branch topic broke on linux-tiny." in text
    assert "failure: kernel failed" in text
    # A branch whose first build is red (the GitLab test's) is news too; mailed once.
    assert [m["Subject"].split(" (")[0] for m in mailbox.messages
            if "gl-broken" in m["Subject"]] == ["ktstr-ci: gl-broken is red"]

    # Every finished build POSTed as JSON, with its properties; no commit status for them.
    posted = {r["json"]["buildid"]: r["json"] for r in requests_to("/post/builds")}
    assert last in posted
    assert posted[last]["results"] == kit.SUCCESS
    assert posted[last]["properties"]["branch"][0] == "topic"
    assert posted[last]["properties"]["kernel_outcome"][0] == "cached"
    assert all(r["headers"]["content-type"].startswith("application/json")
               for r in requests_to("/post/builds"))
    assert not [r for r in Recorder.requests if "topic" in json.dumps(r["json"] or {})
                and r["path"].startswith(("/github", "/gitlab"))]
