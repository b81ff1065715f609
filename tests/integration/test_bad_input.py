"""Bad input at every edge: one case per input, each refused clearly with nothing stored.

Edges: ``/change_hook/base`` (real HTTP against a real master), the force form
(the REST JSON-RPC the web UI uses), our pages and Buildbot's REST API, pushes
to the hosted bare repository (its real hooks) and the ``ktstr-ci`` command.
Every case asserts the status (or exit code), a message that says what is
wrong, and that nothing was stored or scheduled. ``pytest tests/test_bad_input.py``
reports the count: every passing case is a bad input refused clearly.

The kit runs the stand-in factory without workers, so a build request that
slipped through would stay queued and be counted.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakekernel import make_fake_kernel
from tests.support.servicekit import ServiceKit

STANDIN = "tests.support.servicekit:standin_factory"
GOOD_SHA = "1" * 40
BIG = "9" * 30


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceKit]:
    with ServiceKit(tmp_path_factory.mktemp("bad"), factory=STANDIN, workers=False) as k:
        yield k


def stored(kit: ServiceKit) -> tuple[int, int]:
    """(changes, build requests) in the master's database."""
    return (kit.api("changes")["meta"]["total"], kit.api("buildrequests")["meta"]["total"])


def good_fields(kit: ServiceKit) -> dict[str, str]:
    return {"revision": GOOD_SHA, "branch": "main", "repository": str(kit.repo_path),
            "project": "linux", "author": "Ada <ada@example.com>", "comments": "fix"}


def send(kit: ServiceKit, body: bytes | Iterator[bytes] | None, *, method: str = "POST",
         query: str = "", ctype: str = "application/x-www-form-urlencoded",
         chunked: bool = False) -> tuple[int, str]:
    """One authenticated request to /change_hook/base; (status, body text)."""
    password = kit.hook_password_file.read_text().strip()
    token = base64.b64encode(f"hook:{password}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", kit.web_port, timeout=60)
    try:
        conn.request(method, "/change_hook/base" + query, body=body,
                     headers={"Authorization": f"Basic {token}", "Content-Type": ctype},
                     encode_chunked=chunked)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def form(fields: dict[str, str]) -> bytes:
    return urllib.parse.urlencode(fields).encode()


# -- /change_hook/base ---------------------------------------------------------------

# (id, how the good fields change, expected status, words the answer must hold)
Edit = Callable[[dict[str, str]], None]


def drop(*names: str) -> Edit:
    return lambda f: [f.pop(n) for n in names]


def put(**values: str) -> Edit:
    return lambda f: f.update(values)


HOOK_FIELD_CASES: list[tuple[str, Edit, str]] = [
    ("no-revision", drop("revision"), "missing field revision"),
    ("no-branch", drop("branch"), "missing field branch"),
    ("no-repository", drop("repository"), "missing field repository"),
    ("empty-body", drop("revision", "branch", "repository", "project", "author", "comments"),
     "missing field revision, branch, repository"),
    ("revision-zzzz", put(revision="zzzz"), "revision 'zzzz': it is not a commit id"),
    ("revision-shell", put(revision="$(reboot)"), "revision '$(reboot)': it is not a commit id"),
    ("revision-option", put(revision="--upload-pack=touch /tmp/x"), "it is not a commit id"),
    ("revision-short", put(revision="abc1234"), "it is not a commit id of 40"),
    ("revision-upper", put(revision="A" * 40), "lowercase hex digits"),
    ("revision-zeros", put(revision="0" * 40), "all zeros (a deleted branch)"),
    ("branch-shell", put(branch="x;reboot"), "it has characters ';'"),
    ("branch-option", put(branch="-rf"), "it starts with '-'"),
    ("branch-dotdot", put(branch="a..b"), "it has '..'"),
    ("branch-lock", put(branch="foo.lock"), "ends with '.lock'"),
    ("branch-HEAD", put(branch="HEAD"), "'HEAD' names the current commit"),
    ("branch-300", put(branch="b" * 300), "300 characters long; the limit is 250"),
    ("branch-newline", put(branch="main\n"), "it has characters '\\n'"),
    ("branch-hidden-part", put(branch="x/.y"), "its part '.y' starts with '.'"),
    ("branch-non-ascii", put(branch="caf\u00e9"), "it has characters '\\xe9'"),
    ("repository-unknown", put(repository="/srv/other.git"), "is not one of ktstr-ci's repositories"),
    ("codebase", put(codebase="other"), "must be empty"),
    ("author-300", put(author="a" * 300), "author is 300 characters long; the limit is 255"),
    ("when-text", put(when_timestamp="yesterday"), "when_timestamp 'yesterday' is not seconds"),
    ("when-nan", put(when_timestamp="nan"), "is not seconds since 1970"),
    ("when-huge", put(when_timestamp="1e30"), "is not seconds since 1970"),
    ("files-not-json", put(files="a.c"), "is not a JSON list of file names"),
    ("files-not-list", put(files='{"a": 1}'), "is not a JSON list of file names"),
    ("properties-not-json", put(properties="{bad"), "is not a JSON object"),
    ("properties-list", put(properties="[1]"), "is not a JSON object"),
    ("property-profile", put(properties='{"profile": "defconfig"}'),
     "property 'profile' is a build property"),
    ("property-force", put(properties='{"force": true}'), "property 'force' is a build property"),
    ("property-clean", put(properties='{"clean": true}'), "property 'clean' is a build property"),
    ("property-repo", put(properties='{"repo": "x"}'), "property 'repo' is a build property"),
    ("property-worker", put(properties='{"tree_store": "/"}'),
     "property 'tree_store' is a build property"),
    ("property-step", put(properties='{"kernel_outcome": "cached"}'),
     "property 'kernel_outcome' is a build property"),
    ("nul-in-comments", put(comments="a\x00b"), "field comments contains a NUL character"),
]


@pytest.mark.parametrize(("edit", "needle"), [c[1:] for c in HOOK_FIELD_CASES],
                         ids=[c[0] for c in HOOK_FIELD_CASES])
def test_change_hook_refuses_a_bad_field(kit: ServiceKit, edit: Edit, needle: str) -> None:
    before = stored(kit)
    fields = good_fields(kit)
    edit(fields)
    status, text = send(kit, form(fields))
    assert status == 400 and needle in text, (status, text)
    assert "\n" not in text.strip()
    assert stored(kit) == before


def _raw(kit: ServiceKit, extra: bytes) -> bytes:
    return form(good_fields(kit)) + extra


HOOK_REQUEST_CASES: list[tuple[str, Callable[[ServiceKit], tuple[int, str]], int, str]] = [
    ("field-twice", lambda k: send(k, _raw(k, b"&branch=other")), 400,
     "field branch is given 2 times; give it once"),
    ("not-utf8", lambda k: send(k, _raw(k, b"&committer=%FF%FE")), 400,
     "field committer is not UTF-8 text"),
    ("get", lambda k: send(k, None, method="GET", query="?" + form(good_fields(k)).decode()), 400,
     "use POST"),
    ("json-body", lambda k: send(k, json.dumps(good_fields(k)).encode(), ctype="application/json"),
     400, "send the fields form-encoded"),
    ("body-2MiB", lambda k: send(k, form({**good_fields(k), "comments": "x" * (2 << 20)})), 413,
     "over the limit of 1048576 bytes for /change_hook/base"),
    ("body-30MiB", lambda k: send(k, form({**good_fields(k), "comments": "x" * (30 << 20)})), 413,
     "over the limit"),
    ("body-chunked-2MiB",
     lambda k: send(k, iter([form(good_fields(k))] + [b"&x=" + b"y" * (1 << 20)] * 2), chunked=True),
     413, "over the limit of 1048576 bytes"),
]


@pytest.mark.parametrize(("request_", "status", "needle"), [c[1:] for c in HOOK_REQUEST_CASES],
                         ids=[c[0] for c in HOOK_REQUEST_CASES])
def test_change_hook_refuses_a_bad_request(kit: ServiceKit, request_, status: int,
                                           needle: str) -> None:
    before = stored(kit)
    got, text = request_(kit)
    assert got == status and needle in text, (got, text[:300])
    assert stored(kit) == before


def test_a_good_change_is_still_stored_and_scheduled(kit: ServiceKit) -> None:
    """The control: the same request with nothing wrong (not counted as a bad input)."""
    changes, requests = stored(kit)
    fields = {**good_fields(kit), "properties": '{"note": "hand-made"}',
              "files": '["kernel/sched/ext.c"]', "when_timestamp": "1700000000"}
    status, text = send(kit, form(fields))
    assert status == 200 and "1 change found" in text
    kit.wait_for(lambda: stored(kit) == (changes + 1, requests + 1), 10, "the change's build request")
    change = kit.api("changes", order="-changeid", limit=1)["changes"][0]
    assert change["properties"]["note"] == ["hand-made", "Change"]


# -- the force form ------------------------------------------------------------------

def _force(**params: Any) -> dict[str, Any]:
    return {"builderNames": ["linux-tiny"], "branch": "main", **params}


FORCE_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("builder-unknown", _force(builderNames=["nope"]), "builderNames", "unknown builder 'nope'"),
    ("builder-empty", _force(builderNames=[]), "builderNames", "must be a non-empty list"),
    ("builder-missing", {"branch": "main"}, "builderNames", "name the builder"),
    ("builder-string", _force(builderNames="linux-tiny"), "builderNames", "non-empty list"),
    ("builderid-unknown", {"builderid": "9999", "branch": "main"}, "builderNames",
     "no builder with id 9999"),
    ("builderid-huge", {"builderid": BIG, "branch": "main"}, "builderNames",
     "builderid must be a builder's number"),
    ("builderid-text", {"builderid": "abc", "branch": "main"}, "builderNames",
     "builderid must be a builder's number"),
    ("branch-empty", _force(branch=""), "branch", "needs to be specified"),
    ("branch-lock", _force(branch="foo.lock"), "branch", "its part 'foo.lock' ends with '.lock'"),
    ("branch-300", _force(branch="b" * 300), "branch", "the limit is 250"),
    ("branch-HEAD", _force(branch="HEAD"), "branch", "'HEAD' names the current commit"),
    ("branch-shell", _force(branch="a;b"), "branch", "it has characters ';'"),
    ("branch-number", _force(branch=5), "branch", "it is not a string"),
    ("revision-short", _force(revision="abc"), "revision", "it is not a commit id"),
    ("revision-shell", _force(revision="$(reboot)"), "revision", "it is not a commit id"),
    ("clean-string", _force(clean="yes"), "clean", 'clean must be true or false (a JSON boolean), not "yes"'),
    ("clean-number", _force(clean=1), "clean", "clean must be true or false"),
    ("force-string", _force(force="true"), "force", "force must be true or false"),
    ("reason-300", _force(reason="r" * 300), "reason", "300 characters long; the limit is 200"),
    ("reason-number", _force(reason=5), "reason", "reason must be text"),
    ("profile-unknown", _force(profile="huge"), "profile", "does not belong to list"),
    ("repository-unknown", _force(repository="/srv/other.git"), "repository",
     "does not belong to list"),
]


@pytest.mark.parametrize(("params", "field", "needle"), [c[1:] for c in FORCE_CASES],
                         ids=[c[0] for c in FORCE_CASES])
def test_force_form_refuses(kit: ServiceKit, params: dict, field: str, needle: str) -> None:
    before = stored(kit)
    status, body = kit._rpc("forceschedulers/force", "force", params, True)
    assert status == 400, body
    message = body["error"]["message"]
    assert needle in str(message.get(field)), message
    assert stored(kit) == before


# -- our pages and Buildbot's REST API -------------------------------------------------

PAGE_CASES: list[tuple[str, str, int, str]] = [
    ("matrix-id-huge", f"plugins/ktstr/dash/matrix.html?id={BIG}", 400,
     "id must be an integer from 1 to 9223372036854775807"),
    ("matrix-id-text", "plugins/ktstr/dash/matrix.html?id=abc", 400,
     "id must be an integer"),
    ("matrix-id-zero", "plugins/ktstr/dash/matrix.html?id=0", 400,
     "id must be an integer from 1"),
    ("branch-limit-huge", f"plugins/ktstr/dash/branch.html?name=main&limit={BIG}", 400,
     "limit must be an integer from 1 to 1000"),
    ("trends-days-huge", f"plugins/ktstr/dash/trends.html?days={BIG}", 400,
     "days must be an integer from 1 to 365"),
    ("trends-days-negative", "plugins/ktstr/dash/trends.html?days=-5", 400,
     "days must be an integer from 1 to 365"),
    ("artifacts-number-huge", f"plugins/wsgi_dashboards/artifacts/linux-tiny/{BIG}/", 404, ""),
    ("rest-limit-huge", f"api/v2/changes?limit={BIG}", 400, f"limit={BIG} is out of range"),
    ("rest-offset-huge", f"api/v2/changes?offset={BIG}", 400, f"offset={BIG} is out of range"),
    ("rest-filter-huge", f"api/v2/builds?buildid__gt={BIG}", 400, "buildid__gt="),
    ("rest-build-huge", f"api/v2/builds/{BIG}", 404, "no object has the id"),
    ("rest-builder-huge", f"api/v2/builders/{BIG}/builds", 404, "no object has the id"),
    ("rest-log-huge", f"api/v2/logs/{BIG}/raw", 404, "no object has the id"),
    ("rest-step-huge", f"api/v2/builds/1/steps/{BIG}", 404, "no object has the id"),
]


@pytest.mark.parametrize(("path", "status", "needle"), [c[1:] for c in PAGE_CASES],
                         ids=[c[0] for c in PAGE_CASES])
def test_pages_refuse_out_of_range_numbers(kit: ServiceKit, path: str, status: int,
                                           needle: str) -> None:
    try:
        with urllib.request.urlopen(kit.web_url + path, timeout=10) as resp:
            got, text = resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        got, text = exc.code, exc.read().decode(errors="replace")
    assert got == status and needle in text, (got, text[:300])


# -- pushes ------------------------------------------------------------------------------

PUSH_CASES: list[tuple[str, str, str]] = [
    ("push-HEAD", "HEAD", "'HEAD' names the current commit, not a branch"),
    ("push-260", "b" * 260, "it is 260 characters long; the limit is 250"),
    ("push-301-in-parts", "a" * 200 + "/" + "b" * 100, "it is 301 characters long; the limit is 250"),
    ("push-shell", "a;b", "it has characters ';'"),
    ("push-option", "-rf", "it starts with '-'"),
]


@pytest.mark.parametrize(("name", "needle"), [c[1:] for c in PUSH_CASES],
                         ids=[c[0] for c in PUSH_CASES])
def test_push_refuses(kit: ServiceKit, name: str, needle: str) -> None:
    tree = kit.root / "push-tree"
    if not tree.exists():
        kit.make_tree({"Makefile": "all:\n\ttrue\n"}, path=tree)
    before = stored(kit)
    res = kit.push(tree, name, check=False)
    assert res.returncode != 0
    assert "remote: ktstr-ci: refusing branch" in res.output and needle in res.output, res.output
    assert "Push it under another name" in res.output
    assert "cannot lock ref" not in res.output
    refs = kit.git(kit.repo_path, "for-each-ref", "--format=%(refname)").stdout.split()
    assert f"refs/heads/{name}" not in refs
    assert stored(kit) == before


# -- the command line ---------------------------------------------------------------------

def ktstr(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    p = subprocess.run(["ktstr-ci", *args], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    return p.returncode, p.stderr


def assert_one_line_error(rc: int, err: str, needle: str) -> None:
    assert rc == 1, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ktstr-ci: error: "), err
    assert needle in lines[0], err


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_fake_kernel(tmp_path / "linux")


def test_cli_config_that_is_a_directory(tree: Path) -> None:
    (tree / ".config").mkdir()
    rc, err = ktstr("kernel", "build", "--source", str(tree))
    assert_one_line_error(rc, err, f"{tree / '.config'} is a directory, not a kernel config")


@pytest.mark.parametrize(("text", "needle"), [
    ("[]", "holds a JSON list, not an object"),
    ('{"source_dir": 5}', "source_dir must be str, not 5"),
    ('{"llcs": ["a"]}', "llcs must be list[int]"),
    ('"state"', "holds a JSON str, not an object"),
], ids=["list", "source_dir-number", "llcs-strings", "string"])
def test_cli_state_file_of_the_wrong_shape(tmp_path: Path, text: str, needle: str) -> None:
    state = tmp_path / "state.json"
    state.write_text(text)
    for phase in ("make", "summary"):
        rc, err = ktstr("phase", phase, "--state", str(state))
        assert_one_line_error(rc, err, needle)
        assert "run the build again from lookup" in err


WAITS = ["nan", "inf", "-1", "abc"]


@pytest.mark.parametrize("value", WAITS)
def test_cli_kernel_build_wait(tree: Path, value: str) -> None:
    rc, err = ktstr("kernel", "build", "--source", str(tree), f"--wait={value}")
    assert_one_line_error(rc, err, f"--wait must be a finite number of seconds, 0 or more, "
                                   f"not {value!r}")


@pytest.mark.parametrize(("args", "needle"), [
    (["acquire", "--name", "w1", "--wait=nan"], "--wait must be a finite number of seconds, 0 or more"),
    (["acquire", "--name", "w2", "--wait=-5"], "--wait must be a finite number of seconds, 0 or more"),
    (["acquire", "--name", "w3", "--max-lifetime=inf"],
     "--max-lifetime must be a finite number of seconds, more than 0, not 'inf'"),
    (["acquire", "--name", "w4", "--max-lifetime=0"],
     "--max-lifetime must be a finite number of seconds, more than 0, not '0'"),
    (["lock-source", "--name", "w5", "--source", "/tmp", "--wait=inf"],
     "--wait must be a finite number of seconds, 0 or more"),
], ids=["acquire-wait-nan", "acquire-wait-negative", "acquire-lifetime-inf", "acquire-lifetime-0",
        "lock-source-wait-inf"])
def test_cli_holder_seconds(args: list[str], needle: str) -> None:
    rc, err = ktstr("holder", *args)
    assert_one_line_error(rc, err, needle)


BYPASS_WITH_ENV_CAP = {"KTSTR_CPU_CAP": "2", "KTSTR_BYPASS_LLC_LOCKS": "1"}


def test_cli_env_cap_with_bypass_refused_before_any_download(kernel_org) -> None:
    kernel_org.set_releases([("stable", "6.14.9")])
    kernel_org.add_fake_kernel("6.14.9")
    rc, err = ktstr("kernel", "build", "6.14.9", env=BYPASS_WITH_ENV_CAP)
    assert_one_line_error(rc, err, "KTSTR_CPU_CAP=2 conflicts with KTSTR_BYPASS_LLC_LOCKS=1")
    assert "resource contract" in err
    assert kernel_org.requests == []


def test_cli_env_cap_with_bypass_refused_on_a_cache_hit(kernel_org) -> None:
    kernel_org.set_releases([("stable", "6.14.9")])
    kernel_org.add_fake_kernel("6.14.9")
    rc, err = ktstr("kernel", "build", "6.14.9")
    assert rc == 0, err
    rc, err = ktstr("kernel", "build", "6.14.9", env=BYPASS_WITH_ENV_CAP)
    assert_one_line_error(rc, err, "KTSTR_CPU_CAP=2 conflicts with KTSTR_BYPASS_LLC_LOCKS=1")
    assert "cached kernel found" not in err


def test_cli_holder_env_cap_with_bypass_starts_no_holder(tmp_path: Path) -> None:
    rc, err = ktstr("holder", "acquire", "--name", "cap-bypass", env=BYPASS_WITH_ENV_CAP)
    assert_one_line_error(rc, err, "KTSTR_CPU_CAP=2 conflicts with KTSTR_BYPASS_LLC_LOCKS=1")
    rc, err = ktstr("holder", "status", "--name", "cap-bypass")
    assert rc == 1 and "cap-bypass" in err
