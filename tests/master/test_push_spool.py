"""No push is lost: the hook spools what the master did not take; the master drains the spool.

Hook tests push with real git into a real bare repository with the real hooks,
against a stand-in receiver on 127.0.0.1 (tests/test_master_hooks.py) that can
be closed, made to answer an error or to hang. Drain tests run
:class:`master.push_spool.PushSpoolService` against a small fake master that
records ``addChange`` calls. The real master and workers are in
tests/test_push_spool_service.py.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, task

from master import hooks
from master.hooks import spool
from master.push_spool import PushSpoolService, check_change
from tests.support.hookkit import Receiver, git, hooked_repo, push

SHA_A = "a" * 40
SHA_B = "b" * 40


# -- the spool format -----------------------------------------------------------


def change(branch: str, revision: str, **extra: Any) -> dict[str, Any]:
    return {"branch": branch, "revision": revision, "repository": "/r.git", "project": "linux",
            "category": "push", "author": "A <a@x>", "committer": "C <c@x>",
            "comments": "msg", "when_timestamp": "1700000000", **extra}


def test_write_is_atomic_and_ordered(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    first = spool.write(d, change("x", SHA_A), reason="down")
    second = spool.write(d, change("y", SHA_B), reason="down", delivery=spool.DELIVERY_UNKNOWN)
    assert first.name < second.name
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temp file left
    [a, b] = spool.pending(d)
    assert a.path == first and a.change["branch"] == "x" and a.change["delivery"] == "failed"
    assert b.change["delivery"] == "unknown" and b.change["reason"] == "down"
    assert set(spool.CHANGE_FIELDS) <= set(a.change)
    assert spool.pending_branches(d) == {"x", "y"}
    assert spool.pending(tmp_path / "none") == []


def test_plan_keeps_the_newest_tip_per_branch_and_deletions_drop(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    spool.write(d, change("x", SHA_A), reason="r")
    spool.write(d, change("y", SHA_A), reason="r")
    spool.write(d, change("x", SHA_B), reason="r")
    spool.write(d, change("z", SHA_A), reason="r")
    spool.write(d, change("z", spool.ZERO), reason="deleted")
    batches = {b.branch: b for b in spool.plan(spool.pending(d))}
    assert batches["x"].newest.change["revision"] == SHA_B and len(batches["x"].files) == 2
    assert batches["y"].newest.change["revision"] == SHA_A and len(batches["y"].files) == 1
    assert batches["z"].newest is None and len(batches["z"].files) == 2
    # in the order of each branch's newest push
    assert [b.branch for b in spool.plan(spool.pending(d))] == ["y", "x", "z"]


def test_unreadable_files_are_reported_and_rejected_not_lost(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    d.mkdir()
    (d / "0001-1-0000.json").write_text("{not json")
    (d / "0002-1-0000.json").write_text(json.dumps({"format": 99}))
    entries = spool.pending(d)
    assert [e.change for e in entries] == [None, None]
    assert "unreadable" in entries[0].error and "format" in entries[1].error
    dest = spool.reject(entries[0].path, entries[0].error)
    assert dest.read_text() == "{not json"
    assert "unreadable" in (d / "rejected" / "0001-1-0000.json.why").read_text()
    assert spool.plan(spool.pending(d)) == []


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    d.mkdir()
    tmp = d / ".x.json.tmp"
    tmp.write_text("{")
    spool.remove_stale_tmp(d, now=time.time())
    assert tmp.exists()
    spool.remove_stale_tmp(d, now=time.time() + spool.STALE_TMP_S + 1)
    assert not tmp.exists()


# -- the hook ---------------------------------------------------------------------


class Answering:
    """A change-hook stand-in that answers every POST with ``status`` after ``delay`` s."""

    def __init__(self, status: int, delay: float = 0.0) -> None:
        self.posts = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts += 1
                time.sleep(delay)
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"no such thing")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def repo(tmp_path: Path):
    receiver = Receiver()
    bare, work, cfg, _ = hooked_repo(tmp_path, receiver.port, timeout=1)
    yield bare, work, cfg, receiver
    receiver.close()


def point_at(bare: Path, cfg: dict, port: int) -> None:
    cfg["change_hook_url"] = f"http://127.0.0.1:{port}/change_hook/base"
    hooks.install(bare, cfg)


def new_commit(work: Path, text: str) -> str:
    (work / "f").write_text(text)
    git(work, "add", "f")
    git(work, "commit", "-q", "-m", text)
    return git(work, "rev-parse", "HEAD").stdout.strip()


def test_master_down_spools_the_change_with_what_the_hook_would_post(repo) -> None:
    bare, work, cfg, receiver = repo
    receiver.close()
    sha = git(work, "rev-parse", "HEAD").stdout.strip()
    proc = push(work, bare, "HEAD:refs/heads/topic")
    assert proc.returncode == 0
    sdir = bare / spool.SPOOL_NAME
    assert (f"remote: ktstr-ci: the master at {cfg['change_hook_url']} is not reachable "
            "([Errno 111] Connection refused); the push of topic is queued in "
            f"{sdir} and builds when the master is back") in proc.stderr, proc.stderr
    [e] = spool.pending(sdir)
    c = e.change
    assert c["branch"] == "topic" and c["revision"] == sha
    assert c["repository"] == str(bare) and c["project"] == "linux" and c["category"] == "push"
    assert c["author"] == "Ada <ada@example.com>" and c["committer"] == "Ada <ada@example.com>"
    assert c["comments"] == "first line\n\nbody text" and float(c["when_timestamp"]) > 0
    assert c["delivery"] == "failed" and "Connection refused" in c["reason"]


def test_server_error_spools_but_a_refusal_does_not(repo) -> None:
    bare, work, cfg, _ = repo
    sdir = bare / spool.SPOOL_NAME
    for status, spooled in ((503, True), (500, True), (400, False), (403, False)):
        srv = Answering(status)
        try:
            point_at(bare, cfg, srv.port)
            new_commit(work, f"s{status}")
            proc = push(work, bare, f"HEAD:refs/heads/s{status}")
        finally:
            srv.close()
        assert proc.returncode == 0 and srv.posts == 1
        assert (f"s{status}" in spool.pending_branches(sdir)) is spooled, (status, proc.stderr)
        if spooled:
            assert f"the master answered HTTP {status} no such thing; the push of" in proc.stderr
        else:
            assert f"could not notify CI: the master answered HTTP {status}" in proc.stderr


def test_timeout_spools_as_maybe_delivered(repo) -> None:
    bare, work, cfg, _ = repo
    srv = Answering(200, delay=3)  # the hook waits 1 s
    try:
        point_at(bare, cfg, srv.port)
        proc = push(work, bare, "HEAD:refs/heads/slow")
    finally:
        srv.close()
    assert "did not answer" in proc.stderr and "it may have the push" in proc.stderr
    [e] = spool.pending(bare / spool.SPOOL_NAME)
    assert e.change["delivery"] == "unknown"


def test_missing_password_spools(repo) -> None:
    bare, work, cfg, receiver = repo
    Path(cfg["password_file"]).unlink()
    proc = push(work, bare, "HEAD:refs/heads/topic")
    assert "the hook password file" in proc.stderr and "is missing; the push of topic is queued" in proc.stderr
    assert spool.pending_branches(bare / spool.SPOOL_NAME) == {"topic"}
    assert receiver.posts == []


def test_a_newer_push_queues_behind_a_queued_one_even_with_the_master_up(repo) -> None:
    bare, work, cfg, receiver = repo
    sdir = bare / spool.SPOOL_NAME
    spool.write(sdir, change("topic", SHA_A), reason="earlier")
    new = new_commit(work, "two")
    proc = push(work, bare, "HEAD:refs/heads/topic")
    assert "an earlier push of this branch is still queued for the master; this push of topic" in proc.stderr
    assert receiver.posts == []
    assert [e.change["revision"] for e in spool.pending(sdir)] == [SHA_A, new]
    # other branches are posted at once
    assert push(work, bare, "HEAD:refs/heads/other").returncode == 0
    assert [p["branch"] for p in receiver.posts] == ["other"]


def test_deleting_a_branch_with_a_queued_push_drops_it(repo) -> None:
    bare, work, cfg, receiver = repo
    sdir = bare / spool.SPOOL_NAME
    receiver.close()
    push(work, bare, "HEAD:refs/heads/gone")
    proc = push(work, bare, ":refs/heads/gone")
    assert "remote: ktstr-ci: branch gone deleted; its queued build is dropped" in proc.stderr
    [batch] = spool.plan(spool.pending(sdir))
    assert batch.newest is None and len(batch.files) == 2
    # a deletion with nothing queued spools nothing
    git(work, "push", str(bare), "HEAD:refs/tags/t")
    proc = push(work, bare, ":refs/tags/t")
    assert len(spool.pending(sdir)) == 2


def test_unwritable_spool_says_how_to_build_anyway(repo) -> None:
    bare, work, cfg, receiver = repo
    receiver.close()
    sdir = bare / spool.SPOOL_NAME
    sdir.rmdir()
    sdir.write_text("in the way\n")
    proc = push(work, bare, "HEAD:refs/heads/topic")
    assert proc.returncode == 0
    assert "could not notify CI: the master at" in proc.stderr
    assert "and could not queue the push" in proc.stderr and "force a build of topic" in proc.stderr


# -- draining (fake master) ------------------------------------------------------


class FakeScheduler:
    def __init__(self, active: bool = True) -> None:
        self.active = active
        self._change_consumer = object() if active else None

    def isActive(self) -> bool:  # noqa: N802 (Buildbot API)
        return self.active


class FakeMaster:
    def __init__(self, scheduler: FakeScheduler | None = None) -> None:
        self.added: list[dict] = []
        self.stored: list[dict] = []  # the changes table, oldest first
        self.fail: Exception | None = None
        self.reactor = task.Clock()
        self.scheduler_manager = type("SM", (), {})()
        self.scheduler_manager.namedServices = {"push-linux": scheduler or FakeScheduler()}
        self.data = type("Data", (), {})()
        self.data.updates = type("Updates", (), {})()
        self.data.updates.addChange = self._add
        self.data.get = self._get

    def _add(self, **kw: Any) -> defer.Deferred:
        if self.fail is not None:
            return defer.fail(self.fail)
        self.added.append(kw)
        self.stored.append(kw)
        return defer.succeed(len(self.stored))

    def _get(self, path, filters=None, order=None, limit=None) -> defer.Deferred:
        assert path == ("changes",) and order == ["-changeid"] and limit == 1
        want = {f.field: f.values[0] for f in filters}
        rows = [c for c in self.stored if all(c.get(k) == v for k, v in want.items())]
        return defer.succeed(rows[-1:])


def drainer(tmp_path: Path, master: FakeMaster) -> tuple[PushSpoolService, Path]:
    sdir = tmp_path / "linux.git" / spool.SPOOL_NAME
    svc = PushSpoolService(repos=[{"name": "linux", "url": "/srv/linux.git", "spool": str(sdir),
                                   "scheduler": "push-linux"}])
    svc.reconfigService(**svc._config_kwargs)
    svc.parent = type("Parent", (), {"master": master})()  # what setServiceParent gives it
    return svc, sdir


def run(d: defer.Deferred) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the fake master answers at once"
    if isinstance(out[0], Exception):
        raise out[0]
    return out[0]


def test_drain_adds_the_newest_tip_per_branch_with_the_hooks_fields(tmp_path: Path) -> None:
    m = FakeMaster()
    svc, sdir = drainer(tmp_path, m)
    spool.write(sdir, change("x", SHA_A), reason="down")
    spool.write(sdir, change("x", SHA_B, repository="/elsewhere", project="p"), reason="down")
    spool.write(sdir, change("y", SHA_A), reason="down")
    assert run(svc.drain()) == 2
    assert [(c["branch"], c["revision"]) for c in m.added] == [("x", SHA_B), ("y", SHA_A)]
    x = m.added[0]
    assert x == {"author": "A <a@x>", "committer": "C <c@x>", "files": [], "comments": "msg",
                 "revision": SHA_B, "when_timestamp": 1700000000, "branch": "x",
                 "category": "push", "revlink": "", "properties": {},
                 "repository": "/srv/linux.git", "codebase": "", "project": "linux"}
    assert spool.pending(sdir) == []
    assert run(svc.drain()) == 0 and len(m.added) == 2


def test_drain_waits_for_the_push_scheduler(tmp_path: Path) -> None:
    m = FakeMaster(FakeScheduler(active=False))
    svc, sdir = drainer(tmp_path, m)
    svc.running = True
    spool.write(sdir, change("x", SHA_A), reason="down")
    assert run(svc.drain()) == 0 and m.added == [] and len(spool.pending(sdir)) == 1
    # it looks again soon, not a whole drain interval later
    [call] = m.reactor.getDelayedCalls()
    assert call.getTime() == pytest.approx(0.2)
    m.scheduler_manager.namedServices["push-linux"] = FakeScheduler(active=True)
    m.reactor.advance(0.2)
    assert len(m.added) == 1 and spool.pending(sdir) == []
    svc.running = False
    # or the master finished starting (the scheduler runs on another master)
    m.scheduler_manager.namedServices = {}
    spool.write(sdir, change("y", SHA_A), reason="down")
    assert run(svc.drain()) == 0
    m._master_initialized = True
    assert run(svc.drain()) == 1


def test_a_failed_add_keeps_the_file_for_the_next_pass(tmp_path: Path) -> None:
    m = FakeMaster()
    svc, sdir = drainer(tmp_path, m)
    spool.write(sdir, change("x", SHA_A), reason="down")
    m.fail = RuntimeError("database is locked")
    assert run(svc.drain()) == 0  # logged, not raised
    assert len(spool.pending(sdir)) == 1
    m.fail = None
    assert run(svc.drain()) == 1 and spool.pending(sdir) == []


def test_deletion_drops_and_bad_changes_are_rejected(tmp_path: Path) -> None:
    m = FakeMaster()
    svc, sdir = drainer(tmp_path, m)
    spool.write(sdir, change("gone", SHA_A), reason="down")
    spool.write(sdir, change("gone", spool.ZERO), reason="branch deleted")
    spool.write(sdir, change("evil", "$(reboot)"), reason="down")
    spool.write(sdir, change("a..b", SHA_A), reason="down")
    (sdir / "0-0-0000.json").write_text("{")
    assert run(svc.drain()) == 0 and m.added == []
    assert spool.pending(sdir) == []
    rejected = sorted(p.name for p in (sdir / "rejected").glob("*.why"))
    assert len(rejected) == 3
    whys = " ".join((sdir / "rejected" / n).read_text() for n in rejected)
    assert "revision '$(reboot)': it is not a commit id" in whys and "; CI builds branch names" in whys
    assert "unreadable" in whys


def test_maybe_delivered_is_skipped_when_the_branch_already_has_it(tmp_path: Path) -> None:
    m = FakeMaster()
    svc, sdir = drainer(tmp_path, m)
    m.stored.append({"repository": "/srv/linux.git", "branch": "x", "revision": SHA_A})
    spool.write(sdir, change("x", SHA_A), reason="timed out", delivery=spool.DELIVERY_UNKNOWN)
    assert run(svc.drain()) == 0 and spool.pending(sdir) == []
    # a different newest revision: the POST did not get through, add it
    spool.write(sdir, change("x", SHA_B), reason="timed out", delivery=spool.DELIVERY_UNKNOWN)
    assert run(svc.drain()) == 1
    # certainly not delivered: always added, even if the branch had that tip before
    spool.write(sdir, change("x", SHA_B), reason="refused")
    assert run(svc.drain()) == 1


def test_one_drainer_at_a_time(tmp_path: Path) -> None:
    m = FakeMaster()
    svc, sdir = drainer(tmp_path, m)
    spool.write(sdir, change("x", SHA_A), reason="down")
    other = spool.try_lock_drain(sdir)  # another master draining this spool
    assert other is not None and spool.try_lock_drain(sdir) is None
    assert run(svc.drain()) == 0 and len(spool.pending(sdir)) == 1
    spool.unlock_drain(other)
    assert run(svc.drain()) == 1 and spool.pending(sdir) == []
    assert (sdir / spool.DRAIN_LOCK).exists()  # not a spooled change


def test_check_change() -> None:
    assert check_change({"branch": "feature/x-1", "revision": SHA_A}) is None
    assert check_change({"branch": "x", "revision": "c" * 64}) is None
    for bad in ({"branch": "x", "revision": "zzzz"}, {"branch": "x", "revision": SHA_A[:39]},
                {"branch": "x", "revision": "--upload-pack=x"}, {"branch": "x"},
                {"branch": "-x", "revision": SHA_A}, {"branch": "x.lock", "revision": SHA_A},
                {"branch": "", "revision": SHA_A}, {"revision": SHA_A},
                {"branch": 5, "revision": SHA_A}):
        assert check_change(bad) is not None, bad
