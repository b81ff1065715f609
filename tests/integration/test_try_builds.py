"""Try builds on a real master and real workers (tests/support/servicekit.py, the real master.cfg).

The fake kernel tree (tests/support/fakekernel.py) is pushed to the hosted repository;
patches are sent with the real ``buildbot try`` client over PB to the try port.
A try build is dirty: every phase runs, nothing is stored under the commit's
cache key, and ``diff_hash`` (sha256 of ``git diff HEAD`` of the patched tree)
lands in the build properties and the records row. Bad input (a patch that
does not apply, a wrong password, an unknown user) fails clearly and leaves
push builds alone.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import settings as settings_mod
from master import tryjobs
from tests.support.fakekernel import git, make_fake_kernel
from tests.support.paths import VENV_BIN
from tests.support.servicekit import FAILURE, SUCCESS, ServiceKit, free_port

pytestmark = pytest.mark.integration

BANNER = 'static const char linux_banner[] = "Linux version 6.12.0-ktstrfake";'
TRY_BANNER = 'static const char linux_banner[] = "Linux version 6.12.0-ktstrfake-try";'
# The documented diff_hash command (README): sha256 of this command's output.
DIFF_HASH_ARGV = ["diff", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames",
                  "--binary", "--full-index", "--ignore-submodules=all", "HEAD"]


class TryKit:
    """A started ServiceKit with a try port, the fake kernel pushed to ``main`` and built."""

    def __init__(self, kit: ServiceKit, try_port: int, tree: Path) -> None:
        self.kit = kit
        self.port = try_port
        self.tree = tree
        self.cfg = settings_mod.load(kit.settings_file, root=kit.root).try_

    def password(self, user: str = "try") -> str:
        return json.loads(self.cfg.users_file.read_text())[user]

    def send(self, patch: Path, *, user: str = "try", password: str | None = None,
             branch: str = "main", profile: str = "tiny",
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = tryjobs.try_command(
            self.cfg, user=user, password=self.password(user) if password is None else password,
            branch=branch, profile=profile, diff=str(patch))
        argv[0] = str(VENV_BIN / "buildbot")
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              cwd=self.kit.root)

    def try_builds(self) -> list[dict]:
        return [b for p in ("tiny",) for b in self.kit.builds(builder=tryjobs.builder_name(p))]

    def wait_try_build(self, after: int, timeout: float = 300) -> dict:
        def done() -> dict | None:
            new = [b for b in self.try_builds() if b["buildid"] > after and b["complete"]]
            return new[0] if new else None

        return self.kit.wait_for(done, timeout, "a finished try build", interval=0.2)

    def wait_push_build(self, after: int, timeout: float = 300) -> dict:
        """The next finished build of the push builder (try builds share the branch name)."""
        def done() -> dict | None:
            new = [b for b in self.kit.builds(builder="linux-tiny")
                   if b["buildid"] > after and b["complete"]]
            return new[0] if new else None

        return self.kit.wait_for(done, timeout, "a finished push build", interval=0.2)

    def last_buildid(self) -> int:
        builds = self.kit.api("builds", order="-buildid", limit=1)["builds"]
        return builds[0]["buildid"] if builds else 0

    def record_row(self, buildid: int) -> dict:
        with sqlite3.connect(self.kit.root / "records.sqlite") as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM kernel_builds WHERE buildid = ?", (buildid,)).fetchone()
        assert row is not None, f"no kernel_builds row for build {buildid}"
        return dict(row)


def make_patch(tree: Path, path: str, old: str, new: str, dest: Path) -> Path:
    """``git diff`` of one edit in ``tree``, written to ``dest``; the tree is left clean."""
    f = tree / path
    text = f.read_text()
    assert old in text
    f.write_text(text.replace(old, new))
    dest.write_text(git(tree, "diff"))
    git(tree, "checkout", "--", path)
    return dest


def expected_diff_hash(kit: ServiceKit, patch: Path, workdir: Path) -> str:
    """Apply ``patch`` the way the Git step does, in a fresh clone, and hash the diff."""
    clone = workdir / f"clone-{time.monotonic_ns()}"
    subprocess.run(["git", "clone", "-q", "-b", "main", str(kit.repo_path), str(clone)],
                   check=True, capture_output=True)
    subprocess.run(["git", "-C", str(clone), "apply", "--index", "-p", "1", str(patch)],
                   check=True, capture_output=True)
    out = subprocess.run(["git", "-C", str(clone), *DIFF_HASH_ARGV], check=True,
                         capture_output=True).stdout
    return hashlib.sha256(out).hexdigest()


def cache_snapshot(cache: Path) -> dict[str, str]:
    """{relative path: sha256} of every file in the kernel cache (lock files aside, and
    the host's make-time history, which every full build updates: it is no entry)."""
    out = {}
    for p in sorted(cache.rglob("*")):
        if p.is_file() and ".locks" not in p.parts and p.name != ".ktstr-ci-make-history.json":
            out[str(p.relative_to(cache))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def tk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TryKit]:
    root = tmp_path_factory.mktemp("trykit")
    port = free_port()
    kit = ServiceKit(
        root, extra_toml=f'\n[try]\nport = {port}\nusers = ["try", "alice"]\nprofiles = ["tiny"]\n'
    )
    with kit:
        tree = make_fake_kernel(root / "linux")
        kit.push(tree, "main")
        build = kit.wait_build("main", finished=True, timeout=300)
        assert build["results"] == SUCCESS
        yield TryKit(kit, port, tree)


def test_try_users_file_is_generated_private(tk: TryKit) -> None:
    users = json.loads(tk.cfg.users_file.read_text())
    assert set(users) == {"try", "alice"} and all(len(p) >= 12 for p in users.values())
    assert tk.cfg.users_file.parent == tk.kit.settings.paths.secrets
    assert tk.cfg.users_file.stat().st_mode & 0o777 == 0o600
    builders = {b["name"] for b in tk.kit.api("builders")["builders"]}
    assert "try-tiny" in builders and "try-default" not in builders


def test_try_build_with_a_diff_is_dirty_and_not_cached(tk: TryKit, tmp_path: Path) -> None:
    kit = tk.kit
    push = kit.builds(branch="main", builder="linux-tiny")[-1]
    commit_key = kit.build_properties(push["buildid"])["cache_key"]
    before = cache_snapshot(kit.cache_dir)
    assert any(k.startswith(commit_key + "/") for k in before)

    patch = make_patch(tk.tree, "init/main.c", BANNER, TRY_BANNER, tmp_path / "banner.diff")
    after = tk.last_buildid()
    proc = tk.send(patch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "job has been delivered" in proc.stdout
    build = tk.wait_try_build(after)

    assert build["results"] == SUCCESS, build["state_string"]
    props = kit.build_properties(build["buildid"])
    assert props["kernel_outcome"] == "dirty-not-cached"
    assert props["branch"] == "main"
    want = expected_diff_hash(kit, patch, tmp_path)
    assert props["diff_hash"] == want
    assert props["cache_key"] != commit_key  # keyed as an unknown local tree, never the commit
    steps = {s["name"]: s for s in kit.build_steps(build["buildid"])}
    for phase in ("configure", "make", "validate", "compile-commands", "cache-store"):
        assert steps[phase]["results"] == SUCCESS, phase  # every phase ran
    assert "dirty tree" in steps["cache-lookup"]["state_string"]
    assert "not cached (dirty-not-cached)" in steps["cache-store"]["state_string"]

    # Nothing new in the cache, and the commit's entry is byte for byte what the push stored.
    assert cache_snapshot(kit.cache_dir) == before

    row = tk.record_row(build["buildid"])
    assert row["kernel_outcome"] == "dirty-not-cached"
    assert row["diff_hash"] == want
    assert row["dirty"] in (1, True)
    assert row["builder"] == "try-tiny" and row["branch"] == "main"
    assert row["repository"] == str(kit.repo_path)

    # The patched kernel was built in the try builder's own tree; the push tree is clean.
    try_trees = list((kit.tree_store / "try-tiny").iterdir())
    push_trees = list((kit.tree_store / "linux-tiny").iterdir())
    assert len(try_trees) == 1 and len(push_trees) == 1
    assert TRY_BANNER in (try_trees[0] / "init/main.c").read_text()
    assert BANNER in (push_trees[0] / "init/main.c").read_text()
    status = subprocess.run(["git", "-C", str(push_trees[0]), "status", "--porcelain",
                             "--untracked-files=no"], capture_output=True, text=True, check=True)
    assert status.stdout == ""


def test_try_from_a_working_tree(tk: TryKit, tmp_path: Path) -> None:
    """Without --diff, ``buildbot try`` sends the working tree's changes against --branch."""
    kit = tk.kit
    clone = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", "-b", "main", str(kit.repo_path), str(clone)],
                   check=True, capture_output=True)
    head = git(clone, "rev-parse", "HEAD").strip()
    main_c = clone / "init/main.c"
    main_c.write_text(main_c.read_text().replace(BANNER, TRY_BANNER))
    # What the build should hash: the same change applied by the Git step to the same base.
    patch = tmp_path / "wt.diff"
    patch.write_text(git(clone, "diff"))
    want = expected_diff_hash(kit, patch, tmp_path)

    argv = tryjobs.try_command(tk.cfg, user="try", password=tk.password(), branch="main",
                               profile="tiny")
    assert not any(a.startswith("--diff") for a in argv)
    argv[0] = str(VENV_BIN / "buildbot")
    after = tk.last_buildid()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=clone)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    build = tk.wait_try_build(after)
    assert build["results"] == SUCCESS
    props = kit.build_properties(build["buildid"])
    assert props["kernel_outcome"] == "dirty-not-cached"
    assert props["got_revision"] == head  # built on the working tree's base commit
    assert props["diff_hash"] == want


def test_push_after_a_try_is_unaffected(tk: TryKit, tmp_path: Path) -> None:
    kit = tk.kit
    patch = make_patch(tk.tree, "init/main.c", BANNER, TRY_BANNER, tmp_path / "banner.diff")
    after = tk.last_buildid()
    assert tk.send(patch).returncode == 0
    tk.wait_try_build(after)

    before = cache_snapshot(kit.cache_dir)
    sha = kit.commit(tk.tree, {"README": "a pushed change after a try\n"}, "readme")
    kit.push(tk.tree, "main")
    build = tk.wait_push_build(after)
    assert build["results"] == SUCCESS
    props = kit.build_properties(build["buildid"])
    assert props["kernel_outcome"] == "cached"
    assert props["cache_key"].startswith(f"local-{sha[:7]}-")
    assert "diff_hash" not in props or props["diff_hash"] is None
    row = tk.record_row(build["buildid"])
    assert row["dirty"] in (0, False) and row["diff_hash"] is None
    now = cache_snapshot(kit.cache_dir)
    new = {k.split("/")[0] for k in now} - {k.split("/")[0] for k in before}
    assert new == {props["cache_key"]}


def test_patch_that_does_not_apply_fails_clearly(tk: TryKit, tmp_path: Path) -> None:
    kit = tk.kit
    bad = tmp_path / "bad.diff"
    bad.write_text(
        "diff --git a/init/main.c b/init/main.c\n"
        "--- a/init/main.c\n+++ b/init/main.c\n"
        "@@ -1,3 +1,3 @@\n"
        " this line is not in the file\n-neither is this one\n+replacement\n"
        " nor this\n"
    )
    before = cache_snapshot(kit.cache_dir)
    after = tk.last_buildid()
    assert tk.send(bad).returncode == 0
    build = tk.wait_try_build(after)

    assert build["results"] == FAILURE
    steps = {s["name"]: s for s in kit.build_steps(build["buildid"])}
    summary = steps["checkout"]["state_string"]
    assert "try patch does not apply to main" in summary, summary
    assert "error:" in summary  # git's own first complaint
    assert "make" not in steps or steps["make"]["results"] != SUCCESS
    assert steps["release"]["results"] == SUCCESS  # nothing stays reserved
    row = tk.record_row(build["buildid"])
    assert row["kernel_outcome"] == "failed"
    assert "try patch does not apply" in (row["error"] or "")
    assert cache_snapshot(kit.cache_dir) == before

    # Nothing else is affected: a good try and a push both still build.
    good = make_patch(tk.tree, "init/main.c", BANNER, TRY_BANNER, tmp_path / "good.diff")
    after = tk.last_buildid()
    assert tk.send(good).returncode == 0
    retry = tk.wait_try_build(after)
    assert retry["results"] == SUCCESS
    assert kit.build_properties(retry["buildid"])["kernel_outcome"] == "dirty-not-cached"
    kit.commit(tk.tree, {"README": "push after a bad try\n"}, "readme 2")
    kit.push(tk.tree, "main")
    push = tk.wait_push_build(retry["buildid"])
    assert push["results"] == SUCCESS


@pytest.mark.parametrize("user,password", [("try", "wrong-password"), ("mallory", "x"),
                                           ("alice", "")])
def test_bad_credentials_are_refused(tk: TryKit, tmp_path: Path, user: str,
                                     password: str) -> None:
    """The master refuses the login and says so in its log; no job, no build request.

    Buildbot 4.3's ``buildbot try`` prints the refusal (a PB RemoteError) and then
    never exits (its run() only stops the reactor on success), so the client is
    given until the master has logged the refusal and is then killed.
    """
    patch = make_patch(tk.tree, "init/main.c", BANNER, TRY_BANNER, tmp_path / "p.diff")
    requests_before = len(tk.kit.buildrequests())
    twistd_log = tk.kit.service.master_dir / "twistd.log"
    # Buildbot's pbmanager words it "invalid login from [unknown ]user 'NAME'".
    refusal = re.compile(rf"invalid login from (unknown )?user '{re.escape(user)}'")
    refusals_before = len(refusal.findall(twistd_log.read_text()))
    argv = tryjobs.try_command(tk.cfg, user=user, password=password, branch="main",
                               profile="tiny", diff=str(patch))
    argv[0] = str(VENV_BIN / "buildbot")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tk.kit.root, start_new_session=True)
    try:
        tk.kit.wait_for(
            lambda: len(refusal.findall(twistd_log.read_text())) > refusals_before
            or proc.poll() is not None,
            30, "the master to refuse the try login")
        time.sleep(0.5)  # let the client print what it got
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=10)
    assert "job has been delivered" not in out, out + err
    assert "RemoteError" in err or "Unauthorized" in err, out + err
    assert len(refusal.findall(twistd_log.read_text())) > refusals_before
    time.sleep(1.0)  # a wrongly accepted job would show up as a build request by now
    assert len(tk.kit.buildrequests()) == requests_before


def test_a_second_user_may_send(tk: TryKit, tmp_path: Path) -> None:
    patch = make_patch(tk.tree, "init/main.c", BANNER, TRY_BANNER, tmp_path / "p.diff")
    after = tk.last_buildid()
    proc = tk.send(patch, user="alice")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    build = tk.wait_try_build(after)
    assert build["results"] == SUCCESS


def test_unknown_builder_is_not_built(tk: TryKit, tmp_path: Path) -> None:
    """A try for a builder the scheduler does not serve (a push builder) starts nothing."""
    patch = make_patch(tk.tree, "init/main.c", BANNER, TRY_BANNER, tmp_path / "p.diff")
    requests_before = len(tk.kit.buildrequests())
    argv = tryjobs.try_command(tk.cfg, user="try", password=tk.password(), branch="main",
                               profile="tiny", diff=str(patch))
    argv = [str(VENV_BIN / "buildbot") if a == "buildbot" else
            "--builder=linux-tiny" if a.startswith("--builder=") else a for a in argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tk.kit.root)
    time.sleep(1.0)
    assert len(tk.kit.buildrequests()) == requests_before, proc.stdout + proc.stderr


def test_user_added_by_hand_works_after_reconfig(tk: TryKit, tmp_path: Path) -> None:
    """The users file may grow by hand; ``buildbot reconfig`` re-registers the try users
    (Buildbot 4.3's own Try_Userpass would fail here with "already registered")."""
    users = json.loads(tk.cfg.users_file.read_text())
    users["bob"] = "bobs-password-123"
    tk.cfg.users_file.write_text(json.dumps(users))
    proc = subprocess.run(
        [str(VENV_BIN / "buildbot"), "reconfig", str(tk.kit.service.master_dir)],
        env=tk.kit.service.child_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Reconfiguration appears to have completed successfully" in proc.stdout
    log = (tk.kit.service.master_dir / "twistd.log").read_text()
    assert "already registered" not in log
    patch = make_patch(tk.tree, "init/main.c", BANNER, TRY_BANNER, tmp_path / "p.diff")
    for user in ("bob", "try"):
        after = tk.last_buildid()
        sent = tk.send(patch, user=user)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert tk.wait_try_build(after)["results"] == SUCCESS


@pytest.mark.parametrize("branch", ["-rf", "foo.lock", "HEAD", "b" * 300])
def test_unbuildable_branch_is_refused(tk: TryKit, tmp_path: Path, branch: str) -> None:
    """A try job names its branch: the one branch rule applies, as for pushes and forms.

    ``buildbot try`` prints the master's refusal (a PB error) and never exits on
    failure, so the client is given until it printed it and is then killed.
    """
    patch = make_patch(tk.tree, "init/main.c", BANNER, TRY_BANNER, tmp_path / "p.diff")
    requests_before = len(tk.kit.buildrequests())
    argv = tryjobs.try_command(tk.cfg, user="try", password=tk.password(), branch=branch,
                               profile="tiny", diff=str(patch))
    argv[0] = str(VENV_BIN / "buildbot")
    output = tmp_path / "try.out"
    with open(output, "w") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, text=True,
                                cwd=tk.kit.root, start_new_session=True)
    try:
        tk.kit.wait_for(lambda: "refused the try job" in output.read_text()
                        or proc.poll() is not None, 30, "the try client to print the refusal")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    text = output.read_text()
    assert "job has been delivered" not in text, text
    assert "ktstr-ci refused the try job: branch" in text, text
    time.sleep(0.5)
    assert len(tk.kit.buildrequests()) == requests_before
