"""A real build's logs on a real master: the make log reads like a terminal.

The checkout's own master.cfg and kernel factory, one real worker, the fake
kernel tree with a real gcc warning. Shows, through the REST API as the UI
reads it, which stream each kind of line landed in, that progress never
reached a log, and that the JSON answers came back as each step's ``result``
log.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.support.fakekernel import tree_files
from tests.support.servicekit import ServiceKit

pytestmark = pytest.mark.integration


def log_lines(kit: ServiceKit, logid: int) -> list[tuple[str, str]]:
    """(stream, text) of every line of a log: ``o`` stdout, ``e`` stderr, ``h`` header."""
    url = f"{kit.web_url}api/v2/logs/{logid}/contents"
    with urllib.request.urlopen(url, timeout=10) as resp:
        chunks = json.load(resp)["logchunks"]
    text = "".join(c["content"] for c in chunks)
    return [(line[:1], line[1:]) for line in text.splitlines() if line]


def step_logs(kit: ServiceKit, buildid: int, step: str) -> dict[str, dict]:
    return {log["name"]: log for log in kit.api(f"builds/{buildid}/steps/{step}/logs")["logs"]}


def test_make_log_streams_and_result_logs(tmp_path) -> None:
    files = tree_files()
    # A real gcc warning in every config (tinyconfig turns the fake's WARN knob off).
    files["init/main.c"] = files["init/main.c"].replace(
        "#ifdef CONFIG_KTSTR_FAKE_WARN\n\tint ktstr_fake_unused;\n#endif",
        "\tint ktstr_fake_unused;")
    with ServiceKit(tmp_path, llc_groups=[[0]], profiles=("tiny",)) as kit:
        tree = kit.make_tree(files, path=kit.root / "src" / "warn")
        kit.push(tree, "warn")
        build = kit.wait_finished(kit.wait_build("warn", timeout=30)["buildid"], timeout=300)
        assert build["results"] == kit.WARNINGS, kit.build_steps(build["buildid"])
        bid = build["buildid"]

        logs = step_logs(kit, bid, "make")
        assert set(logs) == {"stdio", "result"}
        stdio = log_lines(kit, logs["stdio"]["logid"])
        out = [t for s, t in stdio if s == "o"]
        err = [t for s, t in stdio if s == "e"]
        assert "  CC      init/main.o" in out
        assert any("init/main.c" in t and "warning: unused variable" in t for t in err), err
        # Only the warning (and gcc's lines about it) on stderr; no CC line there.
        assert not [t for t in err if t.startswith("  CC ")]
        assert not [t for _, t in stdio if "progress" in t]

        result = [json.loads(t) for s, t in log_lines(kit, logs["result"]["logid"])]
        assert result[-1]["warnings"] == 1 and result[-1]["ok"] is True
        events = [e["progress"] for e in result[:-1]]
        assert events and all(e["phase"] == "make" for e in events)
        assert events[0]["text"].endswith("first build of this profile: no estimate")

        step = next(s for s in kit.build_steps(bid) if s["name"] == "make")
        assert step["state_string"] == "built (-j1); 1 warning (warnings)"
        # Every ktstr-ci step answered through its result log.
        for name in ("reserve", "source-lock", "cache-lookup", "configure", "validate",
                     "cache-store", "record", "release"):
            answer = log_lines(kit, step_logs(kit, bid, name)["result"]["logid"])
            assert answer and json.loads(answer[-1][1]), name
