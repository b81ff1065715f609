"""``ktstr-ci kernel list --range A..B`` (ktstr's range preview, against a loopback
releases.json) and ``ktstr-ci locks --watch`` (the live view), run as the installed command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.kernelorg import KernelOrg

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""
ROWS = [("mainline", "6.17-rc4"), ("stable", "6.16.3"), ("stable", "6.15.11"),
        ("longterm", "6.12.44"), ("longterm", "6.6.103"), ("longterm", "6.1.150"),
        ("linux-next", "next-20250905")]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ktstr-ci", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


@pytest.fixture
def releases(kernel_org: KernelOrg, tmp_path: Path) -> KernelOrg:
    kernel_org.set_releases(ROWS)
    return kernel_org


# A cache root that cannot be read: the preview must not touch the cache.
def no_cache(tmp_path: Path) -> dict[str, str]:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    return {"KTSTR_CACHE_DIR": str(blocker / "kernels")}


def test_range_preview_lists_the_releases_one_per_line(releases: KernelOrg,
                                                       tmp_path: Path) -> None:
    r = run("kernel", "list", "--range", "6.6..6.16", env=no_cache(tmp_path))
    assert r.returncode == 0, r.stderr
    # Stable/longterm rows inside [6.6, 6.16], ascending; 6.16.3 is past 6.16(.0).
    assert r.stdout == "6.6.103\n6.12.44\n6.15.11\n"
    assert "expanding kernel range 6.6..6.16" in r.stderr
    assert "range expanded to 3 kernel(s): 6.6.103, 6.12.44, 6.15.11" in r.stderr
    assert releases.requests == [("GET", "/releases.json")]  # nothing else, no build


def test_range_preview_json(releases: KernelOrg, tmp_path: Path) -> None:
    r = run("kernel", "list", "--range", "6.1..6.13", "--json", env=no_cache(tmp_path))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"range": "6.1..6.13", "start": "6.1", "end": "6.13",
                                    "versions": ["6.1.150", "6.6.103", "6.12.44"]}


def test_inverted_range_fails_before_any_request(releases: KernelOrg) -> None:
    r = run("kernel", "list", "--range", "6.12..6.6")
    assert r.returncode == 1
    assert "inverted kernel range" in r.stderr
    assert releases.requests == []


def test_empty_range_and_offline_are_clear_errors(releases: KernelOrg) -> None:
    r = run("kernel", "list", "--range", "5.4..5.10")
    assert r.returncode == 1
    assert "kernel range 5.4..5.10 expanded to 0 stable releases" in r.stderr
    r = run("kernel", "list", "--range", "6.1..6.13", "--offline")
    assert r.returncode == 1
    assert [x for x in r.stderr.splitlines() if x] == [
        "ktstr-ci: error: --range reads releases.json: it cannot be --offline"]


def test_range_preview_with_kernel_org_unreachable_names_the_url() -> None:
    url = "http://127.0.0.1:9/releases.json"
    r = run("kernel", "list", "--range", "6.1..6.13", "--releases-url", url)
    assert r.returncode == 1
    [line] = [x for x in r.stderr.splitlines() if x.startswith("ktstr-ci: error: ")]
    assert url in line


def test_locks_watch_shows_count_views_as_json_lines(tmp_path: Path, isolated_env) -> None:
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_dir / "ktstr-llc-0.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        r = run("locks", "--watch", "0.1", "--count", "3", "--json", "--lock-dir", str(lock_dir))
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 0, r.stderr
    views = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(views) == 3
    for v in views:
        [lock] = v["locks"]
        assert (lock["kind"], lock["index"]) == ("llc", 0)
        assert [h["pid"] for h in lock["holders"]] == [holder.pid]


def test_locks_watch_follows_holders_until_interrupted(tmp_path: Path, isolated_env) -> None:
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    path = lock_dir / "ktstr-llc-1.lock"
    path.write_text("")
    # SIGINT as a terminal's Ctrl-C finds it: a test run started in the background
    # (`nohup make test &`) passes it on ignored, and Python then never raises
    # KeyboardInterrupt.
    watch = subprocess.Popen(["ktstr-ci", "locks", "--watch", "0.1", "--lock-dir", str(lock_dir)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    holder = None
    try:
        assert watch.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = watch.stdout.readline()
            lines.append(line)
            if holder is None and line.startswith("llc 1 ") and line.split()[2] == "-":
                # Unheld in this view; a holder that comes now shows in a later one.
                holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)],
                                          stdout=subprocess.PIPE, text=True)
                assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            if holder is not None and line.startswith("llc 1 ") and f" {holder.pid} " in line:
                break
        else:
            pytest.fail(f"the watch never showed the new holder: {''.join(lines[-20:])}")
        assert any("every 0.1s, Ctrl-C to stop" in x for x in lines)
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=10) == 0  # Ctrl-C is how a watch ends
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
        if holder is not None:
            holder.kill()
            holder.wait()


def test_locks_count_needs_watch(tmp_path: Path) -> None:
    r = run("locks", "--count", "2", "--lock-dir", str(tmp_path))
    assert r.returncode == 1
    assert "ktstr-ci: error: --count needs --watch" in r.stderr
