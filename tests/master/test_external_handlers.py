"""The webhook handlers' decisions, in process with a stand-in request object.

The same handlers run behind a real master in ``test_external_service.py``;
this covers what that module's settings do not: ``strict = false`` and a
missing secret file.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from master import webhooks
from settings import Repo, Webhook
from tests.support.paths import PAYLOADS

REPO = Repo(name="gh", url="/srv/gh.git", hosted=False, branches=(".*",), profiles=("tiny",))
PAYLOAD = json.loads((PAYLOADS / "github-push.json").read_text())


class FakeRequest:
    """What the handlers use of twisted's Request: headers, content, write, peer."""

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        self.content = io.BytesIO(body)
        self.headers = {k.lower().encode(): v.encode() for k, v in headers.items()}
        self.written = b""

    def getHeader(self, name: bytes) -> bytes | None:  # noqa: N802 (twisted API)
        return self.headers.get(name.lower())

    def write(self, data: bytes) -> None:
        self.written += data

    def getClientAddress(self) -> Any:  # noqa: N802 (twisted API)
        return SimpleNamespace(host="127.0.0.1")


def handler(cls: type, hooks: list[Webhook]) -> Any:
    return cls(SimpleNamespace(), {"hooks": hooks})


def result(d: Any) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0]


def hook(tmp_path: Path, service: str, strict: bool, secret: str | None = "s3cret") -> Webhook:
    f = tmp_path / f"{service}.secret"
    if secret is not None:
        f.write_text(secret + "\n")
    project = "sched-ext/linux" if service == "github" else "kernel/sched-ext-linux"
    return Webhook(service=service, project=project, repo=REPO, secret_file=f,
                            strict=strict)


def github_request(sign_with: str | None) -> FakeRequest:
    body = json.dumps(PAYLOAD).encode()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push"}
    if sign_with is not None:
        headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(
            sign_with.encode(), body, hashlib.sha256).hexdigest()
    return FakeRequest(body, headers)


def test_github_unsigned_is_accepted_only_when_not_strict(tmp_path: Path) -> None:
    lenient = handler(webhooks.GitHubHook, [hook(tmp_path, "github", strict=False)])
    changes, src = result(lenient.getChanges(github_request(None)))
    assert src == "git" and [c["revision"] for c in changes] == [PAYLOAD["after"]]
    assert changes[0]["repository"] == "/srv/gh.git" and changes[0]["project"] == "gh"
    strict = handler(webhooks.GitHubHook, [hook(tmp_path, "github", strict=True)])
    failure = result(strict.getChanges(github_request(None)))
    assert failure.check(webhooks.Refused) and "unsigned delivery" in str(failure.value)


def test_github_wrong_signature_is_refused_even_when_not_strict(tmp_path: Path) -> None:
    lenient = handler(webhooks.GitHubHook, [hook(tmp_path, "github", strict=False)])
    failure = result(lenient.getChanges(github_request("guess")))
    assert failure.check(webhooks.Refused) and "signature mismatch" in str(failure.value)


def test_missing_secret_file_refuses(tmp_path: Path) -> None:
    h = handler(webhooks.GitHubHook, [hook(tmp_path, "github", strict=True, secret=None)])
    failure = result(h.getChanges(github_request("s3cret")))
    assert failure.check(webhooks.Refused)


@pytest.mark.parametrize("token, ok", [(None, True), ("s3cret", True), ("bad", False)])
def test_gitlab_not_strict(tmp_path: Path, token: str | None, ok: bool) -> None:
    payload = json.loads((PAYLOADS / "gitlab-push.json").read_text())
    headers = {"Content-Type": "application/json", "X-Gitlab-Event": "Push Hook"}
    if token is not None:
        headers["X-Gitlab-Token"] = token
    h = handler(webhooks.GitLabHook, [hook(tmp_path, "gitlab", strict=False)])
    out = result(h.getChanges(FakeRequest(json.dumps(payload).encode(), headers)))
    if ok:
        changes, _ = out
        assert [c["revision"] for c in changes] == [payload["checkout_sha"]]
        assert changes[0]["branch"] == "scx-topology"
    else:
        assert out.check(webhooks.Refused)


def test_revision_must_be_a_commit_id(tmp_path: Path) -> None:
    p = dict(PAYLOAD, after="HEAD~1; reboot")
    body = json.dumps(p).encode()
    req = FakeRequest(body, {"Content-Type": "application/json", "X-GitHub-Event": "push"})
    h = handler(webhooks.GitHubHook, [hook(tmp_path, "github", strict=False)])
    failure = result(h.getChanges(req))
    assert failure.check(webhooks.Refused) and "is not a commit id" in str(failure.value)
