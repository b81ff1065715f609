"""A new branch's tree is seeded from the builder's nearest built tree (pipeline, no Buildbot).

Real git, real cp, the fake kernel's real make: ``prepare_tree`` then what
Buildbot's Git step does (``checkout -f REV``, ``checkout -B BRANCH``), then make.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ktstr_steps.buildsteps.base import branch_dir
from ktstr_steps.errors import KtstrError
from ktstr_steps.treestore import inventory
from ktstr_steps.treestore.mirror import mirror_path
from ktstr_steps.treestore.prepare import prepare_tree
from ktstr_steps.treestore.prune import Limits
from tests.support.fakekernel import git, make_fake_kernel

NO_LIMITS = Limits()


class Host:
    """An upstream work tree, its bare repository, a tree store and a cache root."""

    def __init__(self, root: Path) -> None:
        self.src = make_fake_kernel(root / "src")
        self.repo = root / "linux.git"
        subprocess.run(["git", "init", "-q", "--bare", str(self.repo)], check=True)
        self.store = root / "trees"
        self.cache = root / "cache"
        self.push("main")

    def push(self, branch: str) -> str:
        git(self.src, "push", "-q", "--force", str(self.repo), f"HEAD:refs/heads/{branch}")
        return git(self.src, "rev-parse", "HEAD").strip()

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        for rel, text in files.items():
            (self.src / rel).write_text(text)
        git(self.src, "commit", "-q", "-a", "-m", message)
        return git(self.src, "rev-parse", "HEAD").strip()

    def tree(self, branch: str, builder: str = "kernel") -> Path:
        return self.store / builder / branch_dir(branch)

    def prepare(self, branch: str, rev: str, builder: str = "kernel", now: float | None = None,
                limits: Limits = NO_LIMITS) -> dict:
        return prepare_tree(self.tree(branch, builder), repourl=str(self.repo), branch=branch,
                            revision=rev, cache_root=self.cache, limits=limits, now=now)

    def checkout(self, branch: str, rev: str, builder: str = "kernel") -> Path:
        """What Buildbot's Git step does in an updatable tree whose revision is present."""
        tree = self.tree(branch, builder)
        git(tree, "cat-file", "-e", rev)
        git(tree, "checkout", "-q", "-f", rev)
        git(tree, "checkout", "-q", "-B", branch)
        return tree

    def build(self, branch: str, rev: str, now: float | None = None) -> tuple[Path, str]:
        self.prepare(branch, rev, now=now)
        tree = self.checkout(branch, rev)
        if not (tree / ".config").exists():
            subprocess.run(["make", "-s", "defconfig"], cwd=tree, check=True, capture_output=True)
        out = subprocess.run(["make"], cwd=tree, check=True, capture_output=True, text=True)
        return tree, out.stdout


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def compiled(make_out: str) -> set[str]:
    return {line.split()[1] for line in make_out.splitlines() if line.strip().startswith("CC ")}


def test_new_branch_is_seeded_from_the_built_tree_and_rebuilds_only_the_change(host: Host, capfd):
    base = host.push("main")
    main_tree, out = host.build("main", base)
    assert "init/main.o" in compiled(out)  # a full build
    # What kbuild leaves of objtool's build: a record naming the tree by its absolute path.
    tool_cmd = Path("tools/objtool/.check.o.cmd")
    (main_tree / tool_cmd).parent.mkdir(parents=True)
    (main_tree / tool_cmd).write_text(f"cmd_{main_tree}/tools/objtool/check.o := gcc\n")
    topic = host.commit({"lib/string.c": (host.src / "lib/string.c").read_text() + "\n/* x */\n"})
    host.push("topic")
    capfd.readouterr()
    answer = host.prepare("topic", topic)
    err = capfd.readouterr().err
    assert answer["action"] == "seeded"
    assert answer["seed"]["relocated"] == 1 and "1 build record of its tools (objtool...) rewritten" in err
    assert (host.tree("topic") / tool_cmd).read_text() == \
        f"cmd_{host.tree('topic')}/tools/objtool/check.o := gcc\n"
    assert (main_tree / tool_cmd).read_text() == f"cmd_{main_tree}/tools/objtool/check.o := gcc\n"
    assert answer["seed"]["path"] == str(main_tree)
    assert answer["seed"]["ahead"] == 1 and answer["seed"]["behind"] == 0
    assert f"seeded from trees/kernel/main ({base[:7]}, ancestor of the new commit" in err
    tree = host.checkout("topic", topic)
    out = subprocess.run(["make"], cwd=tree, check=True, capture_output=True, text=True).stdout
    assert compiled(out) == {"lib/string.o"}, out
    assert (tree / "vmlinux").is_file()
    # The seed itself is untouched: still main's commit, its sources and outputs intact.
    assert git(main_tree, "rev-parse", "HEAD").strip() == base
    assert git(main_tree, "status", "--porcelain").strip() == ""
    assert "/* x */" not in (main_tree / "lib/string.c").read_text()
    out = subprocess.run(["make"], cwd=main_tree, check=True, capture_output=True, text=True).stdout
    assert compiled(out) == set(), out  # main's objects were never written through a link
    # Build outputs are the copy's own; unchanged sources are shared only where that is safe.
    for rel in ("lib/string.o", "init/main.o", ".config", "vmlinux"):
        assert (tree / rel).stat().st_ino != (main_tree / rel).stat().st_ino, rel
    assert (tree / "lib/string.c").stat().st_ino != (main_tree / "lib/string.c").stat().st_ino
    shared = (tree / "init/main.c").stat().st_ino == (main_tree / "init/main.c").stat().st_ino
    assert shared == (answer["seed"]["copy"] == "linked-sources")
    stamp = json.loads((tree / ".git" / inventory.STAMP).read_text())
    assert stamp["branch"] == "topic" and stamp["seeded_from"] == str(main_tree)


def test_nearest_tree_wins_ties_go_to_the_most_recently_built(host: Host):
    base = host.push("main")
    host.build("main", base, now=1000.0)
    host.build("old", base, now=500.0)  # same commit, built earlier
    host.commit({"README": "far away\n"})
    far = host.push("far")
    host.build("far", far, now=2000.0)  # most recent, but one commit off the new one's path
    git(host.src, "checkout", "-q", "-b", "tmp", base)
    new = host.commit({"README": "topic\n"})
    host.push("topic")
    answer = host.prepare("topic", new)
    assert answer["seed"]["path"] == str(host.tree("main")), answer
    assert answer["seed"]["behind"] == 0


def test_locked_tree_is_never_a_seed(host: Host):
    base = host.push("main")
    main_tree, _ = host.build("main", base)
    lock = inventory.try_lock(main_tree, host.cache, exclusive=True)  # a build of main
    assert lock is not None
    try:
        answer = host.prepare("topic", base)
    finally:
        lock.release()
    assert answer["action"] == "fresh"
    assert answer["skipped"] == [{"path": str(main_tree), "reason": "locked by a build"}]


def test_no_common_history_gives_a_fresh_tree(host: Host):
    base = host.push("main")
    host.build("main", base)
    other = make_fake_kernel(host.src.parent / "other", commit=False)
    (other / "README").write_text("unrelated\n")
    git(other, "add", "-A")
    git(other, "commit", "-q", "-m", "unrelated root")
    git(other, "push", "-q", str(host.repo), "HEAD:refs/heads/orphan")
    rev = git(other, "rev-parse", "HEAD").strip()
    answer = host.prepare("orphan", rev)
    assert answer["action"] == "fresh"
    assert answer["skipped"][0]["reason"] == "no common history"


def test_history_is_shared_not_copied(host: Host):
    # Enough history that a copied pack would show.
    for i in range(30):
        host.commit({"README": f"rev {i}\n" + os.urandom(20000).hex()})
    base = host.push("main")
    host.build("main", base)
    new = host.commit({"lib/string.c": "/* changed */\n" + (host.src / "lib/string.c").read_text()})
    host.push("topic")
    tree, _ = host.build("topic", new)
    alternates = (tree / ".git/objects/info/alternates").read_text().split()
    assert alternates == [str(mirror_path(host.store, str(host.repo)) / "objects")]
    counts = dict(line.split(": ") for line in git(tree, "count-objects", "-v").splitlines())
    assert int(counts["size-pack"]) == 0 and int(counts["count"]) == 0, counts
    mirror_counts = dict(
        line.split(": ")
        for line in git(mirror_path(host.store, str(host.repo)), "count-objects", "-v").splitlines()
    )
    assert int(mirror_counts["size-pack"]) + int(mirror_counts["size"]) > 100  # KiB: the history


def test_existing_tree_is_stamped_not_reseeded(host: Host):
    base = host.push("main")
    tree, _ = host.build("main", base, now=100.0)
    answer = host.prepare("main", base, now=200.0)
    assert answer["action"] == "existing" and answer["seed"] is None
    assert inventory.read_stamp(tree)["last_built"] == 200.0


def test_bad_input_says_what_and_leaves_nothing(host: Host):
    with pytest.raises(KtstrError, match="revision .* is not in"):
        host.prepare("main", "0" * 40)
    assert not host.tree("main").exists()
    with pytest.raises(KtstrError, match="invalid revision"):
        host.prepare("main", "HEAD;rm")
    with pytest.raises(KtstrError, match="not <tree store>/<builder>/<branch dir>"):
        prepare_tree(Path("relative/x/y"), repourl=str(host.repo), branch="main", revision=None,
                     cache_root=host.cache, limits=NO_LIMITS)
    leftovers = [p for p in (host.store / "kernel").iterdir()] if (host.store / "kernel").exists() else []
    assert leftovers == []
    assert os.listdir(host.store / ".git-objects")  # only the mirror


def test_a_patched_try_tree_seeds_without_its_patch(host: Host):
    base = host.push("main")
    main_tree, _ = host.build("main", base)
    # What Buildbot's try checkout leaves: a patched file, a file the patch added, the marker.
    (main_tree / "lib/string.c").write_text("/* try patch */\n")
    (main_tree / "lib/new.c").write_text("/* added by the patch */\n")
    (main_tree / ".buildbot-patched").write_text("patched\n")
    answer = host.prepare("topic", base)
    assert answer["action"] == "seeded"
    tree = host.checkout("topic", base)
    assert not (tree / ".buildbot-patched").exists() and not (tree / "lib/new.c").exists()
    assert (tree / "lib/string.c").read_text() == (host.src / "lib/string.c").read_text()
    assert (tree / "init/main.o").is_file()  # build outputs (ignored files) kept


def test_a_tree_never_built_is_no_seed(host: Host):
    base = host.push("main")
    host.build("main", base)
    host.prepare("unbuilt", base)
    host.checkout("unbuilt", base)
    # A tree whose build stopped before configure (seeded trees carry their seed's .config).
    (host.tree("unbuilt") / ".config").unlink()
    host.prepare("unbuilt", base, now=9e9)  # and the most recently used
    new = host.commit({"README": "topic\n"})
    host.push("topic")
    answer = host.prepare("topic", new)
    assert answer["seed"]["path"] == str(host.tree("main"))
    assert {"path": str(host.tree("unbuilt")), "reason": "never built (no .config)"} \
        in answer["skipped"]


def test_prepare_checks_the_commit_out_keeping_build_outputs(host: Host):
    base = host.push("main")
    tree, _ = host.build("main", base)
    new = host.commit({"lib/string.c": (host.src / "lib/string.c").read_text() + "\n/* y */\n"})
    host.push("main")
    answer = prepare_tree(tree, repourl=str(host.repo), branch="main", revision=new,
                          cache_root=host.cache, limits=NO_LIMITS, checkout=True)
    assert answer["checkout"]["commit"] == new and answer["checkout"]["cleaned_patch"] is False
    assert git(tree, "rev-parse", "HEAD").strip() == new
    assert git(tree, "symbolic-ref", "--short", "HEAD").strip() == "main"  # as checkout -B does
    assert git(tree, "status", "--porcelain", "--untracked-files=no") == ""
    out = subprocess.run(["make"], cwd=tree, check=True, capture_output=True, text=True).stdout
    assert compiled(out) == {"lib/string.o"}  # the outputs stayed: only the change is built


def test_prepare_without_revision_checks_out_the_branch_head(host: Host):
    head = host.push("main")
    answer = prepare_tree(host.tree("main"), repourl=str(host.repo), branch="main",
                          revision=None, cache_root=host.cache, limits=NO_LIMITS, checkout=True)
    assert answer["action"] == "fresh" and answer["checkout"]["commit"] == head
    assert (host.tree("main") / "lib/string.c").read_text() == \
        (host.src / "lib/string.c").read_text()


def test_prepare_checkout_removes_a_try_patch_but_not_the_build(host: Host, capfd):
    base = host.push("main")
    tree, _ = host.build("main", base)
    # What Buildbot's try checkout leaves: a patched file, a file the patch added (in the
    # index, as `git apply --index` puts it), the marker.
    (tree / "lib/string.c").write_text("/* try patch */\n")
    (tree / "lib/new.c").write_text("/* added by the patch */\n")
    git(tree, "add", "lib/new.c")
    (tree / ".buildbot-patched").write_text("patched\n")
    capfd.readouterr()
    answer = prepare_tree(tree, repourl=str(host.repo), branch="main", revision=base,
                          cache_root=host.cache, limits=NO_LIMITS, checkout=True)
    assert answer["checkout"]["cleaned_patch"] is True
    assert "had a try patch applied" in capfd.readouterr().err
    assert not (tree / ".buildbot-patched").exists() and not (tree / "lib/new.c").exists()
    assert (tree / "lib/string.c").read_text() == (host.src / "lib/string.c").read_text()
    assert (tree / "init/main.o").is_file()  # build outputs (ignored files) kept


def test_a_failed_checkout_says_which_commit_and_tree(host: Host):
    host.push("main")
    tree = host.tree("main")
    prepare_tree(tree, repourl=str(host.repo), branch="main", revision=None,
                 cache_root=host.cache, limits=NO_LIMITS, checkout=True)
    (tree / ".git" / "index.lock").write_text("")  # another git is (or was) at work here
    new = host.commit({"README": "x\n"})
    host.push("main")
    with pytest.raises(KtstrError, match=rf"git checkout {new[:12]} in {tree} failed: .*index\.lock"):
        prepare_tree(tree, repourl=str(host.repo), branch="main", revision=new,
                     cache_root=host.cache, limits=NO_LIMITS, checkout=True)


def _packs(repo: Path) -> dict[int, Path]:
    return {p.stat().st_ino: p for p in (repo / "objects" / "pack").glob("*.pack")}


def test_a_local_repository_gives_its_first_mirror_by_hard_links(host: Host, capfd):
    head = host.push("main")
    git(host.repo, "repack", "-q", "-a", "-d")
    stale = host.store / ".git-objects" / f".{mirror_path(host.store, str(host.repo)).name}.clone-1"
    stale.mkdir(parents=True)  # what a prepare killed mid-clone leaves
    answer = host.prepare("main", head)
    mirror = Path(answer["mirror"])
    assert set(_packs(mirror)) == set(_packs(host.repo)) != set()  # the same files, not copies
    assert "objects hard-linked from" in capfd.readouterr().err
    assert not stale.exists()
    assert git(mirror, "config", "gc.pruneExpire").strip() == "never"
    # Later commits come by an ordinary fetch into the linked mirror.
    new = host.commit({"README": "more\n"})
    host.push("main")
    assert host.prepare("main", new)["commit"] == new


def test_a_url_mirror_is_fetched_not_linked(host: Host, capfd):
    head = host.push("main")
    git(host.repo, "repack", "-q", "-a", "-d")
    url = host.repo.as_uri()  # git takes no local shortcut for file:// URLs
    answer = prepare_tree(host.tree("main"), repourl=url, branch="main", revision=head,
                          cache_root=host.cache, limits=NO_LIMITS)
    mirror = Path(answer["mirror"])
    assert not set(_packs(mirror)) & set(_packs(host.repo))
    assert git(mirror, "cat-file", "-t", head).strip() == "commit"
    assert "hard-linked" not in capfd.readouterr().err
