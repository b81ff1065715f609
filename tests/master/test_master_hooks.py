"""The bare repository's hooks, with real git pushes and a real HTTP receiver on 127.0.0.1.

The receiver stands in for the master's /change_hook/base here (it checks
Basic auth like the master does); tests/test_master_service.py pushes to the
real master.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from master import hooks
from master.hooks import pre_receive
from tests.support.hookkit import Receiver, git, hooked_repo, push


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def setup(tmp_path: Path, receiver: Receiver):
    bare, work, cfg, pw = hooked_repo(tmp_path, receiver.port)
    assert not hooks.ensure_bare_repo(bare)  # idempotent
    return bare, work, cfg, pw


def test_wrappers_use_the_venv_python(setup) -> None:
    bare, *_ = setup
    for hook in ("pre-receive", "post-receive"):
        text = (bare / "hooks" / hook).read_text()
        first = text.splitlines()[0]
        assert first.startswith("#!/") and first.endswith("python") and " " not in first
        assert os.access(bare / "hooks" / hook, os.X_OK)


def test_push_posts_one_change(setup, receiver: Receiver) -> None:
    bare, work, cfg, _ = setup
    proc = push(work, bare, "HEAD:refs/heads/feature/x-1")
    assert proc.returncode == 0, proc.stderr
    sha = git(work, "rev-parse", "HEAD").stdout.strip()
    assert f"remote: ktstr-ci: build of feature/x-1 at {sha[:12]} requested" in proc.stderr
    [post] = receiver.posts
    assert post["path"] == "/change_hook/base"
    assert post["branch"] == "feature/x-1" and post["revision"] == sha
    assert post["repository"] == str(bare) and post["project"] == "linux"
    assert post["author"] == "Ada <ada@example.com>"
    assert post["comments"] == "first line\n\nbody text"
    assert float(post["when_timestamp"]) > 0


def test_bad_refs_are_refused_with_the_fix(setup, receiver: Receiver) -> None:
    bare, work, *_ = setup
    # (git itself already refuses '..', spaces and '~^:?*[\\' in ref names)
    for name, what in [("a$b", "'$'"), ("semi;colon", "';'"), ("x(y)", "'(' ')'"),
                       ("back`tick", "'`'"), ("pipe|amp&", "'&' '|'"), ("ü", "'ü'")]:
        proc = push(work, bare, f"HEAD:refs/heads/{name}")
        assert proc.returncode != 0, name
        assert f"remote: ktstr-ci: refusing branch {name!r}: it has characters {what}" in proc.stderr, proc.stderr
        assert "letters, digits and . _ / -" in proc.stderr
        assert "git push <remote> HEAD:refs/heads/" in proc.stderr
        assert "pre-receive hook declined" in proc.stderr
    # nothing stored, nothing posted
    assert git(bare, "for-each-ref").stdout == ""
    assert receiver.posts == []


def test_refs_outside_branches_and_tags_are_refused(setup) -> None:
    bare, work, *_ = setup
    proc = push(work, bare, "HEAD:refs/notes/x")
    assert proc.returncode != 0
    assert "only branches (refs/heads/...) and tags (refs/tags/...)" in proc.stderr


def test_pre_receive_reads_all_lines(capsys: pytest.CaptureFixture) -> None:
    z = "0" * 40
    ok = f"{z} {'a' * 40} refs/heads/fine"
    assert pre_receive.main([ok]) == 0
    assert pre_receive.main([ok, f"{z} {'a' * 40} refs/heads/x..y"]) == 1
    err = capsys.readouterr().err
    assert "refusing branch 'x..y'" in err and "push refused; nothing was stored" in err
    # deleting is always allowed, whatever the name
    assert pre_receive.main([f"{'a' * 40} {z} refs/heads/x;y"]) == 0


def test_suggestions() -> None:
    assert pre_receive.suggest("a;b c") == "a-b-c"
    assert pre_receive.suggest("..x..y") == "x.y"
    assert pre_receive.check_ref("refs/heads/ok/name-1.2") is None
    assert pre_receive.check_ref("refs/tags/v6.12") is None
    assert "'..'" in pre_receive.check_ref("refs/heads/a..b")


def test_deleted_branch_posts_nothing(setup, receiver: Receiver) -> None:
    bare, work, *_ = setup
    assert push(work, bare, "HEAD:refs/heads/gone").returncode == 0
    receiver.posts.clear()
    proc = push(work, bare, ":refs/heads/gone")
    assert proc.returncode == 0, proc.stderr
    assert "remote: ktstr-ci: branch gone deleted; nothing to build" in proc.stderr
    assert receiver.posts == []


def test_tags_and_unmatched_branches_post_nothing(setup, receiver: Receiver) -> None:
    bare, work, cfg, _ = setup
    assert push(work, bare, "HEAD:refs/tags/v1").returncode == 0
    cfg["branches"] = ["for-.*"]
    hooks.install(bare, cfg)
    proc = push(work, bare, "HEAD:refs/heads/main")
    assert proc.returncode == 0
    assert "branch main is stored but not built: it matches none of the build patterns" in proc.stderr
    assert push(work, bare, "HEAD:refs/heads/for-next").returncode == 0
    assert [p["branch"] for p in receiver.posts] == ["for-next"]


def test_wrong_secret_does_not_fail_the_push(setup, receiver: Receiver) -> None:
    bare, work, _, pw = setup
    pw.write_text("wrong\n")
    proc = push(work, bare, "HEAD:refs/heads/topic")
    assert proc.returncode == 0  # stored
    assert "remote: ktstr-ci: could not notify CI: the master refused the hook's credentials (HTTP 401)" in proc.stderr
    assert git(bare, "rev-parse", "refs/heads/topic").returncode == 0
    assert receiver.posts == []


def test_master_down_does_not_fail_the_push(setup, receiver: Receiver) -> None:
    bare, work, cfg, _ = setup
    receiver.close()
    proc = push(work, bare, "HEAD:refs/heads/topic")
    assert proc.returncode == 0
    # not lost: queued for the master (tests/test_push_spool.py drains it)
    assert "remote: ktstr-ci: the master at" in proc.stderr
    assert "is not reachable" in proc.stderr and "make run" in proc.stderr
    assert f"the push of topic is queued in {bare / 'ktstr-ci-spool'}" in proc.stderr


def test_missing_password_file(setup) -> None:
    bare, work, _, pw = setup
    pw.unlink()
    proc = push(work, bare, "HEAD:refs/heads/topic")
    assert proc.returncode == 0
    assert "the hook password file" in proc.stderr and "is missing" in proc.stderr


def test_ensure_bare_repo_refuses_a_non_repo(tmp_path: Path) -> None:
    d = tmp_path / "x"
    d.mkdir()
    (d / "file").write_text("x")
    with pytest.raises(RuntimeError, match="is not a bare git repository"):
        hooks.ensure_bare_repo(d)


@pytest.mark.parametrize("module", sorted(hooks.HOOKS.values()))
def test_a_hook_loads_neither_the_settings_nor_buildbot(module: str) -> None:
    # Every push waits for both hooks' interpreters: the settings alone cost ~70 ms to import.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            f"import master.hooks.{module}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} "
            "& {'settings', 'buildbot', 'twisted', 'sqlalchemy', 'launcher'}))")
    out = subprocess.run([sys.executable, "-c", code, str(Path(hooks.__file__).parents[2])],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
