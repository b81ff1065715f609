"""The master's side of the remote cache: the newest published entry of a cache key."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from twisted.internet import defer
from twisted.trial import unittest

from master import artifacts

KEY = "local-0123456-x86_64-kcc0bd848c"


def publish(root: Path, builder: str, number: int, *, key: str = KEY, outcome: str = "cached",
            at: str = "2026-11-30T10:00:00+00:00") -> Path:
    d = root / builder / str(number)
    d.mkdir(parents=True)
    (d / "files.json").write_text(json.dumps({
        "builder": builder, "build_number": number, "cache_key": key, "outcome": outcome,
        "published_at": at, "files": {"bzImage": {"size": 3, "sha256": "a" * 64}}}))
    return d


def test_newest_cached_publish_of_the_key_wins(tmp_path: Path) -> None:
    publish(tmp_path, "kernel-tiny", 1, at="2026-11-30T10:00:00+00:00")
    newest = publish(tmp_path, "kernel-other", 2, outcome="cache-hit",
                     at="2026-11-30T12:00:00+00:00")
    publish(tmp_path, "kernel-tiny", 3, outcome="remote-hit", at="2026-11-30T11:00:00+00:00")
    # A dirty build of the same key is never another host's cache entry.
    publish(tmp_path, "kernel-tiny", 4, outcome="dirty-not-cached",
            at="2026-11-30T13:00:00+00:00")
    publish(tmp_path, "kernel-tiny", 5, key="local-7654321-x86_64-kcc0bd848c",
            at="2026-11-30T14:00:00+00:00")
    found = artifacts.find_published(tmp_path, KEY)
    assert found is not None
    assert (found["dir"], found["number"], found["builder_dir"]) == (str(newest), 2,
                                                                       "kernel-other")
    assert found["files"] == {"bzImage": {"size": 3, "sha256": "a" * 64}}


def test_unknown_key_partial_or_missing_root_is_none(tmp_path: Path) -> None:
    assert artifacts.find_published(tmp_path / "absent", KEY) is None
    (tmp_path / "kernel-tiny" / ".partial-9-1").mkdir(parents=True)
    (tmp_path / "kernel-tiny" / ".partial-9-1" / "files.json").write_text(
        json.dumps({"cache_key": KEY, "outcome": "cached", "files": {}}))
    assert artifacts.find_published(tmp_path, KEY) is None
    publish(tmp_path, "kernel-tiny", 1)
    assert artifacts.find_published(tmp_path, "local-0000000-x86_64-kc00000000") is None


class TestFindEntry(unittest.TestCase):
    @defer.inlineCallbacks
    def test_scan_runs_off_the_reactor_thread(self) -> defer.Generator:
        root = Path(self.mktemp())
        publish(root, "kernel-tiny", 1)
        svc = artifacts.ArtifactsService.__new__(artifacts.ArtifactsService)
        svc.root = root
        seen: list[threading.Thread] = []
        real = artifacts.find_published

        def spy(r: Path, key: str) -> object:
            seen.append(threading.current_thread())
            return real(r, key)

        self.patch(artifacts, "find_published", spy)
        found = yield svc.find_entry(KEY)
        self.assertEqual(found["number"], 1)
        self.assertEqual(len(seen), 1)
        self.assertIsNot(seen[0], threading.main_thread())
