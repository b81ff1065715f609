"""GitHub/GitLab webhooks and an upstream poller on a real master (servicekit).

One master for the module (stand-in factory, one worker): repositories
``linux`` (the hosted bare repo), ``gh`` (fed by a GitHub project) and ``gl``
(fed by a GitLab project, branches ``scx-.*`` only), and a poller ``upstream``
on a local bare repository over file://. Payloads are the recorded ones of
``tests/payloads`` with ref and revision changed per test, POSTed over HTTP
to 127.0.0.1 with the headers GitHub and GitLab send.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ktstr_steps.refnames import shown
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


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("external")
    upstream = tmp / "upstream.git"
    work = tmp / "upstream-work"
    subprocess.run(["git", "init", "-q", "--bare", str(upstream)], check=True)
    work.mkdir()
    git(work, "init", "-q", "-b", "for-next")
    first = upstream_commit(work, upstream, "for-next", "upstream base")
    mirrors = {}
    for name in ("gh", "gl"):
        mirrors[name] = tmp / f"{name}-mirror.git"
        subprocess.run(["git", "init", "-q", "--bare", str(mirrors[name])], check=True)
    extra = f"""
[[repos]]
name = "gh"
url = {json.dumps(str(mirrors["gh"]))}
profiles = ["tiny"]

[[repos]]
name = "gl"
url = {json.dumps(str(mirrors["gl"]))}
branches = ["scx-.*"]
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
name = "upstream"
url = "file://{upstream}"
branches = ["for-next", "next.*"]
interval = 1
profiles = ["tiny"]
"""
    kit = ExternalKit(tmp, extra_toml=extra, factory="tests.support.servicekit:standin_factory")
    with kit:
        yield {"kit": kit, "upstream": upstream, "work": work, "first": first, "tmp": tmp}


@pytest.fixture
def kit(env: dict[str, Any]) -> ExternalKit:
    return env["kit"]












def changes_with(kit: ExternalKit, revision: str) -> list[dict]:
    return [c for c in kit.changes() if c["revision"] == revision]


def assert_nothing_scheduled(kit: ExternalKit, revision: str, buildsets_before: int) -> None:
    # The change would be added before the answer; the scheduler acts on it
    # only after. Give it a moment so a wrongly accepted change would show.
    time.sleep(1.0)
    assert changes_with(kit, revision) == []
    assert len(kit.buildsets()) == buildsets_before


def builders_of(kit: ExternalKit, branch: str) -> set[str]:
    names = {b["builderid"]: b["name"] for b in kit.api("builders")["builders"]}
    return {names[b["builderid"]] for b in kit.builds(branch=branch)}


# -- GitHub ------------------------------------------------------------------


def test_github_push_with_the_right_secret_builds_on_the_repo_builder(kit: ExternalKit) -> None:
    sha, branch = new_sha(), "sched-fix-1"
    body = github_payload(branch, sha)
    status, text = kit.post_hook("github", body, github_headers(body, kit.secret("github")))
    assert status in (200, 202), text
    assert "1 change found" in text and "build of gh sched-fix-1" in text
    (change,) = changes_with(kit, sha)
    assert change["branch"] == branch
    # Mapped onto the gh repository: its url and name, so its push scheduler takes it.
    assert change["sourcestamp"]["repository"] == kit.settings.repos[1].url
    assert change["sourcestamp"]["project"] == "gh"
    assert change["author"] == "Tejun Heo <tj@kernel.org>"
    assert change["files"] == [
        "kernel/sched/ext.c",
        "tools/testing/selftests/sched_ext/Makefile",
        "tools/testing/selftests/sched_ext/dsq_nr_queued.bpf.c",
    ]
    assert change["properties"]["external_project"] == [GH_PROJECT, "Change"]
    build = kit.wait_build(branch, finished=True, timeout=60)
    assert build["results"] == kit.SUCCESS
    props = kit.build_properties(build["buildid"])
    assert props["revision"] == sha and props["repo"] == "gh" and props["profile"] == "tiny"
    assert props["standin_repourl"] == kit.settings.repos[1].url
    assert builders_of(kit, branch) == {"gh-tiny"}


def test_github_sha1_only_signature_is_accepted(kit: ExternalKit) -> None:
    """Older GitHub Enterprise sends only X-Hub-Signature (SHA-1)."""
    sha, branch = new_sha(), "sched-sha1"
    body = github_payload(branch, sha)
    status, text = kit.post_hook(
        "github", body, github_headers(body, kit.secret("github"), sha256=False))
    assert status in (200, 202), text
    kit.wait_build(branch, timeout=60)
    assert builders_of(kit, branch) == {"gh-tiny"}


@pytest.mark.parametrize("case, expect", [
    ("wrong secret", "signature mismatch"),
    ("no signature", "unsigned delivery"),
    ("sha256 right, sha1 wrong", "signature mismatch"),
    ("signature of another body", "signature mismatch"),
    ("malformed signature", "malformed X-Hub-Signature-256 header"),
    ("no event header", "X-GitHub-Event header is missing"),
    ("unknown project", "GitHub project someone/else has no [[external.webhooks]] entry"),
])
def test_github_refused_schedules_nothing(kit: ExternalKit, case: str, expect: str) -> None:
    sha = new_sha()
    body = github_payload("sched-refused", sha)
    secret = kit.secret("github")
    headers = github_headers(body, secret)
    if case == "wrong secret":
        headers = github_headers(body, secret + "x")
    elif case == "no signature":
        headers = github_headers(body, None)
    elif case == "sha256 right, sha1 wrong":
        headers["X-Hub-Signature"] = github_headers(body, "nope")["X-Hub-Signature"]
    elif case == "signature of another body":
        headers = github_headers(github_payload("sched-refused", new_sha()), secret)
    elif case == "malformed signature":
        headers["X-Hub-Signature-256"] = "md5:abc"
    elif case == "no event header":
        del headers["X-GitHub-Event"]
    elif case == "unknown project":
        p = json.loads(body)
        p["repository"]["full_name"] = "someone/else"
        body = json.dumps(p).encode()
        headers = github_headers(body, secret)
    before = len(kit.buildsets())
    status, text = kit.post_hook("github", body, headers)
    assert status == 400, (status, text)
    assert expect in text
    assert_nothing_scheduled(kit, sha, before)
    assert "ktstr-ci: refused GitHub webhook delivery from 127.0.0.1" in kit.master_log


def test_github_without_hook_basic_auth_is_401(kit: ExternalKit) -> None:
    sha = new_sha()
    body = github_payload("sched-noauth", sha)
    before = len(kit.buildsets())
    status, _ = kit.post_hook("github", body, github_headers(body, kit.secret("github")),
                              auth=False)
    assert status == 401
    assert_nothing_scheduled(kit, sha, before)


def test_github_malformed_json_is_400(kit: ExternalKit) -> None:
    body = b'{"ref": "refs/heads/sched-x", "after": '
    before = len(kit.buildsets())
    status, text = kit.post_hook("github", body, github_headers(body, kit.secret("github")))
    assert status == 400
    assert "malformed JSON body" in text
    time.sleep(0.5)
    assert len(kit.buildsets()) == before


def test_github_ping_is_answered_without_a_change(kit: ExternalKit) -> None:
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1,
                       "repository": {"full_name": GH_PROJECT}}).encode()
    n = len(kit.changes())
    status, text = kit.post_hook(
        "github", body, github_headers(body, kit.secret("github"), event="ping"))
    assert status in (200, 202) and "ping for sched-ext/linux received" in text
    assert len(kit.changes()) == n


def test_github_branch_with_shell_characters_is_not_built(
        kit: ExternalKit, env: dict[str, Any]) -> None:
    marker = env["tmp"] / "pwned"
    branch = f"fix;touch${{IFS}}{marker};$(touch {marker})`touch {marker}`"
    sha = new_sha()
    body = github_payload(branch, sha)
    before = len(kit.buildsets())
    status, text = kit.post_hook("github", body, github_headers(body, kit.secret("github")))
    assert status in (200, 202), text  # a valid delivery: accepted, but nothing to build
    assert "is not built" in text and "no change found" in text
    assert_nothing_scheduled(kit, sha, before)
    assert f"branch name {shown(branch)} is not built" in kit.master_log
    assert not marker.exists()
    # Nothing else affected: the next good push builds.
    sha2 = new_sha()
    body = github_payload("sched-after-bad", sha2)
    status, text = kit.post_hook("github", body, github_headers(body, kit.secret("github")))
    assert status in (200, 202), text
    kit.wait_build("sched-after-bad", timeout=60)


def test_github_tag_and_deletion_start_nothing(kit: ExternalKit) -> None:
    secret = kit.secret("github")
    before = len(kit.buildsets())
    sha = new_sha()
    body = github_payload("", sha, ref="refs/tags/v6.12-scx1")
    status, text = kit.post_hook("github", body, github_headers(body, secret))
    assert status in (200, 202) and "tags are stored, not built" in text
    p = json.loads(github_payload("sched-gone", "0" * 40))
    p["deleted"], p["head_commit"], p["commits"] = True, None, []
    body = json.dumps(p).encode()
    status, text = kit.post_hook("github", body, github_headers(body, secret))
    assert status in (200, 202) and "branch deleted" in text
    assert_nothing_scheduled(kit, sha, before)


# -- GitLab ------------------------------------------------------------------


def test_gitlab_push_with_the_right_token_builds_on_the_repo_builder(kit: ExternalKit) -> None:
    sha, branch = new_sha(), "scx-topology-1"
    status, text = kit.post_hook("gitlab", gitlab_payload(branch, sha),
                                 gitlab_headers(kit.secret("gitlab")))
    assert status in (200, 202), text
    assert "1 change found" in text
    (change,) = changes_with(kit, sha)
    assert change["branch"] == branch
    assert change["sourcestamp"]["repository"] == kit.settings.repos[2].url
    assert change["author"] == "GitLab dev user <gitlabdev@dv6700.(none)>"
    assert change["comments"].startswith("sched_ext: Use the LLC mask in select_cpu")
    build = kit.wait_build(branch, finished=True, timeout=60)
    assert build["results"] == kit.SUCCESS
    assert kit.build_properties(build["buildid"])["revision"] == sha
    assert builders_of(kit, branch) == {"gl-tiny"}


@pytest.mark.parametrize("token, expect", [
    ("wrong-token", "wrong X-Gitlab-Token"),
    (None, "delivery without X-Gitlab-Token"),
    ("", "delivery without X-Gitlab-Token"),
])
def test_gitlab_refused_schedules_nothing(kit: ExternalKit, token: str | None, expect: str) -> None:
    sha = new_sha()
    before = len(kit.buildsets())
    status, text = kit.post_hook("gitlab", gitlab_payload("scx-refused", sha),
                                 gitlab_headers(token))
    assert status == 400, (status, text)
    assert expect in text
    assert_nothing_scheduled(kit, sha, before)
    assert "ktstr-ci: refused GitLab webhook delivery from 127.0.0.1" in kit.master_log


def test_gitlab_malformed_json_is_400(kit: ExternalKit) -> None:
    before = len(kit.buildsets())
    status, text = kit.post_hook("gitlab", b"object_kind=push&ref=refs/heads/scx-x",
                                 gitlab_headers(kit.secret("gitlab")))
    assert status == 400
    assert "malformed JSON body" in text
    time.sleep(0.5)
    assert len(kit.buildsets()) == before


def test_gitlab_branch_outside_patterns_and_tags_are_not_built(kit: ExternalKit) -> None:
    token = kit.secret("gitlab")
    before = len(kit.buildsets())
    sha = new_sha()
    status, text = kit.post_hook("gitlab", gitlab_payload("wip", sha), gitlab_headers(token))
    assert status in (200, 202)
    assert "matches none of the build patterns ['scx-.*'] of repository gl; not built" in text
    status, text = kit.post_hook("gitlab", gitlab_payload("v6.12", new_sha(), kind="tag_push"),
                                 gitlab_headers(token, "Tag Push Hook"))
    assert status in (200, 202) and "tags are stored, not built" in text
    assert_nothing_scheduled(kit, sha, before)


def test_gitlab_branch_with_shell_characters_is_not_built(kit: ExternalKit) -> None:
    branch = "scx-$(reboot)|rm -rf ~"
    sha = new_sha()
    before = len(kit.buildsets())
    status, text = kit.post_hook("gitlab", gitlab_payload(branch, sha),
                                 gitlab_headers(kit.secret("gitlab")))
    assert status in (200, 202)
    assert f"branch name {shown(branch)} is not built" in text
    assert_nothing_scheduled(kit, sha, before)


# -- poller ------------------------------------------------------------------


def test_poller_builds_a_new_upstream_commit_without_a_hook(
        kit: ExternalKit, env: dict[str, Any]) -> None:
    upstream, work = env["upstream"], env["work"]
    # pollAtLaunch: the first poll records the heads (no change). Wait until it
    # fetched, so the commit below is new to the poller.
    workdir = kit.settings.master.basedir / "gitpoller-upstream"

    def first_poll_done() -> bool:
        if not workdir.is_dir():
            return False
        refs = subprocess.run(["git", "-C", str(workdir), "for-each-ref", "--format=%(objectname)",
                               "refs/buildbot"], capture_output=True, text=True).stdout.split()
        return env["first"] in refs

    kit.wait_for(first_poll_done, 30, "the poller's first poll")
    assert kit.builds(branch="for-next") == []  # the head at launch is not rebuilt
    hosted_before = subprocess.run(["git", "-C", str(kit.repo_path), "for-each-ref"],
                                   capture_output=True, text=True).stdout

    # Branches the poller must not build: outside the patterns, and an unsafe name.
    git(work, "checkout", "-q", "-b", "other")
    other = upstream_commit(work, upstream, "other", "not followed")
    unsafe = "next;touch${IFS}pwned"
    git(work, "push", "-q", str(upstream), f"HEAD:refs/heads/{unsafe}")
    git(work, "checkout", "-q", "for-next")
    sha = upstream_commit(work, upstream, "for-next", "sched_ext: upstream fix")

    build = kit.wait_build("for-next", finished=True, timeout=60)
    assert build["results"] == kit.SUCCESS
    props = kit.build_properties(build["buildid"])
    assert props["revision"] == sha
    assert props["repo"] == "upstream" and props["profile"] == "tiny"
    assert props["standin_repourl"] == f"file://{upstream}"  # fetches from upstream
    assert builders_of(kit, "for-next") == {"upstream-tiny"}
    (change,) = changes_with(kit, sha)
    assert change["sourcestamp"]["repository"] == f"file://{upstream}"
    assert change["sourcestamp"]["project"] == "upstream"
    # No push here: the hosted repository did not change.
    assert subprocess.run(["git", "-C", str(kit.repo_path), "for-each-ref"],
                          capture_output=True, text=True).stdout == hosted_before

    # A few more polls: the other branches stay unbuilt, the unsafe one is logged.
    time.sleep(3)
    assert changes_with(kit, other) == []
    assert kit.builds(branch="other") == [] and kit.builds(branch=unsafe) == []
    log = kit.master_log
    assert f"poller upstream: branch name {shown(unsafe)} of file://{upstream} is not built" in log
    assert log.count(f"branch name {shown(unsafe)} of file://") == 1  # once, not every poll

    # The next upstream commit builds again (the poller follows the branch).
    sha2 = upstream_commit(work, upstream, "for-next", "sched_ext: second fix")
    build2 = kit.wait_build("for-next", after_buildid=build["buildid"], timeout=60)
    assert kit.build_properties(build2["buildid"])["revision"] == sha2


def test_github_form_encoded_delivery_builds(kit: ExternalKit) -> None:
    """GitHub's other content type: payload=<json>, signed over the form body."""
    import urllib.parse

    sha, branch = new_sha(), "sched-form"
    body = urllib.parse.urlencode({"payload": github_payload(branch, sha).decode()}).encode()
    headers = github_headers(body, kit.secret("github"))
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    status, text = kit.post_hook("github", body, headers)
    assert status in (200, 202), text
    kit.wait_build(branch, timeout=60)
    assert builders_of(kit, branch) == {"gh-tiny"}


def test_rotated_secret_applies_without_a_restart(kit: ExternalKit) -> None:
    hook = next(h for h in kit.settings.external.webhooks if h.service == "gitlab")
    old = kit.secret("gitlab")
    hook.secret_file.write_text("rotated-token-0123456789\n")
    try:
        sha = new_sha()
        before = len(kit.buildsets())
        status, text = kit.post_hook("gitlab", gitlab_payload("scx-rotated", sha),
                                     gitlab_headers(old))
        assert status == 400 and "wrong X-Gitlab-Token" in text
        assert_nothing_scheduled(kit, sha, before)
        status, text = kit.post_hook("gitlab", gitlab_payload("scx-rotated", new_sha()),
                                     gitlab_headers("rotated-token-0123456789"))
        assert status in (200, 202), text
        kit.wait_build("scx-rotated", timeout=60)
    finally:
        hook.secret_file.write_text(old + "\n")
