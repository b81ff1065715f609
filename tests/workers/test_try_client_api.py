"""``ktstr-ci try``'s follower against a loopback REST API: what it shows, how it ends,
and that a web UI which refuses or stops answering ends it with one line, never a hang."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ktstr_steps.errors import KtstrError
from launcher import try_client

JOB = try_client.TryJob(host="127.0.0.1", port=1, user="try", password="pw", branch="main",
                        revision=None, patch=b"", patch_level=1, builder="try-tiny",
                        who="dev", comment="ktstr-ci try abc")


class FakeApi:
    """A REST API whose answers the test scripts: path -> list of bodies, last one repeats."""

    def __init__(self) -> None:
        self.answers: dict[str, list[tuple[int, Any]]] = {}
        self.seen: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                api.seen.append(self.path)
                path = self.path.split("?")[0].removeprefix("/api/v2/")
                queue = api.answers.get(path) or [(404, {})]
                status, body = queue.pop(0) if len(queue) > 1 else queue[0]
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def step(stepid: int, name: str, state: str, results: int | None, complete: bool) -> dict:
    return {"stepid": stepid, "name": name, "state_string": state, "results": results,
            "complete": complete, "started_at": 1}


def test_follow_shows_the_url_each_step_and_returns_the_result(api: FakeApi) -> None:
    api.answers = {
        "buildsets": [(200, {"buildsets": []}), (200, {"buildsets": [{"bsid": 7}]})],
        "buildrequests": [(200, {"buildrequests": [{"buildrequestid": 9}]})],
        "builds": [(200, {"builds": [{"buildid": 3, "builderid": 2, "number": 1}]})],
        "builds/3/steps": [
            (200, {"steps": [step(1, "make", "make 3/10 (30 %)", None, False)]}),
            (200, {"steps": [step(1, "make", "built (-j2)", 0, True),
                             step(2, "record", "pending", None, False)]}),
            (200, {"steps": [step(1, "make", "built (-j2)", 0, True),
                             step(2, "record", "recorded row 4 (dirty-not-cached)", 0, True)]}),
        ],
        "builds/3": [(200, {"builds": [{"complete": False}]}),
                     (200, {"builds": [{"complete": False}]}),
                     (200, {"builds": [{"complete": True, "results": 1,
                                        "state_string": "build successful"}]})],
    }
    lines: list[str] = []
    urls: list[str] = []
    got = try_client.follow(try_client.Api(api.url), JOB, timeout=30, interval=0.01,
                            out=lines.append, url_out=urls.append)
    assert got == 1  # WARNINGS: the command exits 0 for it
    assert urls == [f"{api.url}#/builders/2/builds/1"]
    assert lines == [f"queued: {api.url}#/buildrequests/9", "make: make 3/10 (30 %)",
                     "make: built (-j2) (success)",
                     "record: recorded row 4 (dirty-not-cached) (success)",
                     "build warnings: build successful"]
    # The buildset is found by the reason Buildbot's try scheduler gives the job.
    assert any("reason=%27try%27+job+by+user+dev+%28ktstr-ci+try+abc%29" in p for p in api.seen)


def test_a_web_ui_that_refuses_anonymous_reads_is_one_line(api: FakeApi) -> None:
    api.answers = {"buildsets": [(403, {})]}
    with pytest.raises(KtstrError) as err:
        try_client.follow(try_client.Api(api.url), JOB, timeout=30, interval=0.01,
                          out=lambda _: None)
    assert "refused to show the build (HTTP 403)" in str(err.value)
    assert "anonymous_read" in str(err.value)


def test_a_web_ui_that_stops_answering_ends_the_wait(api: FakeApi,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(try_client, "API_OUTAGE", 0.2)
    api.answers = {"buildsets": [(503, {})]}
    with pytest.raises(KtstrError) as err:
        try_client.follow(try_client.Api(api.url), JOB, timeout=30, interval=0.05,
                          out=lambda _: None)
    assert "has not answered for" in str(err.value) and "HTTP 503" in str(err.value)


def test_a_build_that_never_starts_gives_up_after_the_timeout(api: FakeApi) -> None:
    api.answers = {"buildsets": [(200, {"buildsets": []})]}
    with pytest.raises(KtstrError) as err:
        try_client.follow(try_client.Api(api.url), JOB, timeout=0.3, interval=0.05,
                          out=lambda _: None)
    assert "gave up after 0.3s waiting for the try job's buildset" in str(err.value)
