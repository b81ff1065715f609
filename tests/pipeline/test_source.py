"""Source acquisition with real git repositories, real clones and a loopback kernel.org."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import pytest

from ktstr_steps import keys, source
from ktstr_steps.errors import KtstrError
from ktstr_steps.keys import crc32_hex
from tests.support.kernelorg import KernelOrg  # kernel_org fixture: registered in conftest.py

KC = keys.kconfig_suffix("c0bd848c")

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@ktstr-ci.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@ktstr-ci.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, check=True,
        capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def make_tree(d: Path, *, repo: bool = True, commit: bool = True) -> Path:
    """A minimal kernel-looking tree; ``.config`` is ignored like in a kernel tree."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "Makefile").write_text("all:\n\t@true\n")
    (d / "Kconfig").write_text('mainmenu "test"\n')
    (d / "kernel").mkdir(exist_ok=True)
    (d / "kernel" / "sched.c").write_text("int x;\n")
    (d / ".gitignore").write_text(".config\n")
    if repo:
        git(d, "init", "-q", "-b", "main")
        if commit:
            git(d, "add", "-A")
            git(d, "commit", "-q", "-m", "base")
    return d


def head(d: Path) -> str:
    return git(d, "rev-parse", "HEAD")


# ---------------------------------------------------------------- arch


def test_arch_info() -> None:
    assert source.arch_info("x86_64") == source.ArchInfo(
        "x86_64", "bzImage", "arch/x86/boot/bzImage"
    )
    assert source.arch_info("aarch64") == source.ArchInfo(
        "aarch64", "Image", "arch/arm64/boot/Image"
    )
    assert source.arch_info("arm64").arch == "aarch64"
    assert source.arch_info().arch == {"arm64": "aarch64"}.get(
        platform.machine(), platform.machine()
    )
    with pytest.raises(KtstrError, match="unsupported host architecture 'riscv64'") as ei:
        source.arch_info("riscv64")
    assert ei.value.kind == "unsupported-arch"


# ---------------------------------------------------------------- local: bad input


def test_local_missing_path(tmp_path: Path) -> None:
    with pytest.raises(KtstrError, match=r"/nope: does not exist") as ei:
        source.acquire_local(tmp_path / "nope")
    assert ei.value.kind == "bad-source"
    assert not (tmp_path / "nope").exists()


def test_local_not_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(KtstrError, match=r"/file: not a directory"):
        source.acquire_local(f)


def test_local_not_a_kernel_tree(tmp_path: Path) -> None:
    d = tmp_path / "src"
    d.mkdir()
    (d / "Makefile").write_text("")
    with pytest.raises(KtstrError) as ei:
        source.acquire_local(d)
    assert str(ei.value).startswith(
        f"no kernel source found in {d} (not a kernel source tree — missing Kconfig)"
    )
    assert ei.value.kind == "not-kernel-tree"
    assert sorted(p.name for p in d.iterdir()) == ["Makefile"]  # nothing created


# ---------------------------------------------------------------- local: git state


def test_local_clean_git(tmp_path: Path) -> None:
    d = make_tree(tmp_path / "linux")
    s = source.acquire_local(d)
    h7 = head(d)[:7]
    assert (s.kind, s.is_git, s.is_dirty, s.is_temp, s.git_hash) == (
        "local",
        True,
        False,
        False,
        h7,
    )
    assert s.src_dir == s.canonical_path == d.resolve()
    assert s.version is None and s.config_crc is None
    assert s.cacheable
    arch = source.arch_info().arch
    assert s.cache_key(KC) == f"local-{h7}-{arch}-{KC}"
    assert s.source_meta() == {
        "type": "local",
        "source_tree_path": str(d.resolve()),
        "git_hash": h7,
    }


def test_local_canonical_path_through_symlink(tmp_path: Path) -> None:
    d = make_tree(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(d)
    s = source.acquire_local(link)
    assert s.canonical_path == d.resolve()
    assert s.source_meta()["source_tree_path"] == str(d.resolve())


def test_local_config_crc_in_key(tmp_path: Path) -> None:
    d = make_tree(tmp_path / "linux")
    cfg = b"CONFIG_SCHED_CLASS_EXT=y\nCONFIG_BPF=y\n"
    (d / ".config").write_bytes(cfg)
    s = source.acquire_local(d)
    assert not s.is_dirty  # .config is ignored, as in a kernel tree
    assert s.config_crc == crc32_hex(cfg)
    arch = source.arch_info().arch
    assert s.cache_key(KC) == f"local-{head(d)[:7]}-{arch}-cfg{crc32_hex(cfg)}-{KC}"
    # A different .config is a different key.
    (d / ".config").write_bytes(cfg + b"CONFIG_X=y\n")
    assert source.acquire_local(d).cache_key(KC) != s.cache_key(KC)


def _unknown_key(d: Path) -> str:
    arch = source.arch_info().arch
    return f"local-unknown-{crc32_hex(str(d.resolve()).encode())}-{arch}-{KC}"


def test_local_dirty_unstaged(tmp_path: Path) -> None:
    d = make_tree(tmp_path / "linux")
    (d / "kernel" / "sched.c").write_text("int y;\n")
    s = source.acquire_local(d)
    assert (s.is_git, s.is_dirty, s.git_hash) == (True, True, None)
    assert not s.cacheable
    assert s.cache_key(KC) == _unknown_key(d)
    assert s.source_meta()["git_hash"] is None


def test_local_dirty_staged(tmp_path: Path) -> None:
    d = make_tree(tmp_path / "linux")
    (d / "kernel" / "new.c").write_text("int z;\n")
    git(d, "add", "kernel/new.c")
    s = source.acquire_local(d)
    assert s.is_dirty and s.git_hash is None
    assert s.cache_key(KC) == _unknown_key(d)


def test_local_staged_then_reverted_in_worktree_is_dirty(tmp_path: Path) -> None:
    # HEAD vs index differs even though the worktree matches HEAD again.
    d = make_tree(tmp_path / "linux")
    (d / "Kconfig").write_text("changed\n")
    git(d, "add", "Kconfig")
    (d / "Kconfig").write_text('mainmenu "test"\n')
    assert source.inspect_git(d).dirty


def test_local_deleted_tracked_file_is_dirty(tmp_path: Path) -> None:
    d = make_tree(tmp_path / "linux")
    (d / "kernel" / "sched.c").unlink()
    assert source.inspect_git(d).dirty


def test_local_untracked_only_is_clean(tmp_path: Path) -> None:
    d = make_tree(tmp_path / "linux")
    (d / "scratch.txt").write_text("notes\n")
    (d / "kernel" / "wip.c").write_text("int w;\n")
    s = source.acquire_local(d)
    assert not s.is_dirty and s.git_hash == head(d)[:7]


def test_inspect_does_not_write_the_index(tmp_path: Path) -> None:
    # A stat-only change (touch) must read as clean and must not make git
    # rewrite .git/index: the post-build re-check runs in the user's tree.
    d = make_tree(tmp_path / "linux")
    index = d / ".git" / "index"
    before = index.stat()
    time.sleep(1.1)
    os.utime(d / "kernel" / "sched.c")
    state = source.inspect_git(d)
    assert state.is_git and not state.dirty
    after = index.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert not (d / ".git" / "index.lock").exists()


def test_local_ignores_submodule_changes(tmp_path: Path) -> None:
    sub_src = make_tree(tmp_path / "subsrc")
    d = make_tree(tmp_path / "linux")
    subprocess.run(
        ["git", "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub_src), "tools/sub"],
        cwd=d, env={**os.environ, **GIT_ENV}, check=True, capture_output=True,
    )  # fmt: skip
    git(d, "commit", "-q", "-m", "add submodule")
    assert not source.inspect_git(d).dirty
    (d / "tools" / "sub" / "Kconfig").write_text("changed inside the submodule\n")
    git(d / "tools" / "sub", "commit", "-q", "-am", "move submodule head")
    assert not source.inspect_git(d).dirty


def test_local_non_git(tmp_path: Path) -> None:
    d = make_tree(tmp_path / "linux", repo=False)
    s = source.acquire_local(d)
    assert (s.is_git, s.is_dirty, s.git_hash) == (False, True, None)
    assert not s.cacheable
    assert s.cache_key(KC) == _unknown_key(d)
    assert s.source_meta() == {
        "type": "local",
        "source_tree_path": str(d.resolve()),
        "git_hash": None,
    }


def test_local_nested_in_parent_repo_is_judged_by_the_parent(tmp_path: Path) -> None:
    parent = tmp_path / "work"
    parent.mkdir()
    git(parent, "init", "-q", "-b", "main")
    tree = make_tree(parent / "src" / "linux", repo=False)
    git(parent, "add", "-A")
    git(parent, "commit", "-q", "-m", "vendored kernel")
    s = source.acquire_local(tree)
    assert s.is_git and not s.is_dirty
    assert s.git_hash == head(parent)[:7]
    assert source.inspect_git(tree).toplevel == parent.resolve()
    (tree / "Makefile").write_text("changed\n")
    assert source.acquire_local(tree).is_dirty


def test_local_git_dir_env_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = make_tree(tmp_path / "other")
    d = make_tree(tmp_path / "linux", repo=False)
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    s = source.acquire_local(d)
    assert not s.is_git  # judged by its own path, not by the inherited GIT_DIR


def test_local_unborn_head_is_an_error(tmp_path: Path) -> None:
    d = make_tree(tmp_path / "linux", commit=False)
    with pytest.raises(KtstrError, match=r"cannot read HEAD .*\(no commits yet\?\)") as ei:
        source.acquire_local(d)
    assert ei.value.kind == "git-failed"


# ---------------------------------------------------------------- git clone


@pytest.fixture
def upstream(tmp_path: Path) -> dict[str, str]:
    """A bare repo with two commits on main, a branch with a slash, and a tag."""
    tmp_path = tmp_path / "upstream"
    work = make_tree(tmp_path / "work")
    first = head(work)
    (work / "kernel" / "sched.c").write_text("int second;\n")
    git(work, "commit", "-q", "-am", "second")
    git(work, "tag", "v6.12")
    git(work, "checkout", "-q", "-b", "sched_ext/for-6.15")
    (work / "kernel" / "ext.c").write_text("int ext;\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "ext")
    bare = tmp_path / "repo.git"
    git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
    return {
        "url": f"file://{bare}",
        "bare": str(bare),
        "first": first,
        "main": git(bare, "rev-parse", "main"),
        "tag": git(bare, "rev-parse", "v6.12^{commit}"),
        "branch": git(bare, "rev-parse", "sched_ext/for-6.15"),
    }


def test_clone_branch(
    tmp_path: Path, upstream: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    tmp = tmp_path / "t"
    tmp.mkdir()
    s = source.acquire_git(upstream["url"], "main", tmp)
    assert s.src_dir == tmp / "linux"
    assert (s.kind, s.ref, s.git_hash) == ("git", "main", upstream["main"][:7])
    assert (s.is_temp, s.is_dirty, s.is_git, s.version) == (True, False, True, None)
    assert (s.src_dir / "kernel" / "sched.c").read_text() == "int second;\n"
    assert not (s.src_dir / "kernel" / "ext.c").exists()
    # Shallow: one commit only.
    assert git(s.src_dir, "rev-list", "--count", "HEAD") == "1"
    assert git(s.src_dir, "rev-parse", "--is-shallow-repository") == "true"
    arch = source.arch_info().arch
    assert s.cache_key(KC) == f"main-git-{upstream['main'][:7]}-{arch}-{KC}"
    assert s.source_meta() == {"type": "git", "git_hash": upstream["main"][:7], "ref": "main"}
    assert f"ktstr-ci: cloning {upstream['url']} (ref: main, depth: 1)" in capsys.readouterr().err


def test_clone_tag(tmp_path: Path, upstream: dict[str, str]) -> None:
    s = source.acquire_git(upstream["url"], "v6.12", tmp_path)
    assert s.git_hash == upstream["tag"][:7]
    assert s.cache_key(KC).startswith(f"v6.12-git-{upstream['tag'][:7]}-")


def test_clone_branch_with_slash(tmp_path: Path, upstream: dict[str, str]) -> None:
    s = source.acquire_git(upstream["url"], "sched_ext/for-6.15", tmp_path)
    assert s.git_hash == upstream["branch"][:7]
    assert (s.src_dir / "kernel" / "ext.c").is_file()
    key = s.cache_key(KC)
    assert "/" not in key and keys.validate_key(key) == key


def test_clone_full_sha(tmp_path: Path, upstream: dict[str, str]) -> None:
    s = source.acquire_git(upstream["url"], upstream["first"], tmp_path)
    assert s.git_hash == upstream["first"][:7]
    assert (s.src_dir / "kernel" / "sched.c").read_text() == "int x;\n"
    assert git(s.src_dir, "rev-list", "--count", "HEAD") == "1"


def test_clone_moved_branch_gives_new_key(tmp_path: Path, upstream: dict[str, str]) -> None:
    a = source.acquire_git(upstream["url"], "main", tmp_path / "a")
    work = tmp_path / "mover"
    git(tmp_path, "clone", "-q", "-b", "main", upstream["bare"], str(work))
    (work / "Kconfig").write_text("moved\n")
    git(work, "commit", "-q", "-am", "move main")
    git(work, "push", "-q", "origin", "main")
    b = source.acquire_git(upstream["url"], "main", tmp_path / "b")
    assert a.git_hash != b.git_hash and a.cache_key(KC) != b.cache_key(KC)


def test_clone_unknown_ref(tmp_path: Path, upstream: dict[str, str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KtstrError, match=r"git ref 'no-such-branch' not found in file://") as ei:
        source.acquire_git(upstream["url"], "no-such-branch", out)
    assert ei.value.kind == "git-ref-not-found"
    assert list(out.iterdir()) == []


def test_clone_unknown_sha(tmp_path: Path, upstream: dict[str, str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KtstrError, match="not found in file://") as ei:
        source.acquire_git(upstream["url"], "ab" * 20, out)
    assert ei.value.kind == "git-ref-not-found"
    assert list(out.iterdir()) == []


def test_clone_unreachable_url(tmp_path: Path) -> None:
    with pytest.raises(
        KtstrError, match=r"clone fetch: git failed for file://.*/missing.git"
    ) as ei:
        source.acquire_git(f"file://{tmp_path}/missing.git", "main", tmp_path)
    assert ei.value.kind == "git-failed"
    assert not (tmp_path / "linux").exists()


def test_clone_of_a_non_kernel_repo_is_removed(tmp_path: Path) -> None:
    work = tmp_path / "notkernel"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "README").write_text("hi\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "x")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KtstrError, match="not a kernel source tree — missing Makefile and Kconfig"):
        source.acquire_git(f"file://{work}", "main", out)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "ref",
    [
        "main; touch PWNED",
        "$(touch PWNED)",
        "`touch PWNED`",
        "main|touch PWNED",
        "--upload-pack=touch PWNED",
        "-b",
        "main&&id",
        "a..b",
        "topic.lock",
        "x@{1}",
        "",
        "main\n",
        ".hidden",
        "a//b",
    ],
)
def test_bad_refs_are_rejected_before_git_runs(
    tmp_path: Path, upstream: dict[str, str], ref: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KtstrError, match="invalid git ref") as ei:
        source.acquire_git(upstream["url"], ref, tmp_path)
    assert ei.value.kind == "bad-ref"
    assert not (tmp_path / "linux").exists()
    assert not list(tmp_path.rglob("PWNED"))


def test_url_that_looks_like_an_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KtstrError, match="invalid git URL") as ei:
        source.acquire_git("--upload-pack=touch PWNED", "main", tmp_path)
    assert ei.value.kind == "bad-git-url"
    assert not list(tmp_path.rglob("PWNED"))


def test_ext_transport_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KtstrError):
        source.acquire_git("ext::sh -c touch% PWNED", "main", tmp_path)
    assert not list(tmp_path.rglob("PWNED"))


def test_existing_clone_dir_is_not_clobbered(tmp_path: Path, upstream: dict[str, str]) -> None:
    (tmp_path / "linux").mkdir()
    (tmp_path / "linux" / "mine").write_text("keep")
    with pytest.raises(KtstrError, match="already exists"):
        source.acquire_git(upstream["url"], "main", tmp_path)
    assert (tmp_path / "linux" / "mine").read_text() == "keep"


# ---------------------------------------------------------------- tarball


def test_acquire_tarball(kernel_org: KernelOrg, tmp_path: Path) -> None:
    digest = kernel_org.add_tarball("6.12.44")
    s = source.acquire_tarball("6.12.44", tmp_path, sha256=digest)
    assert s.src_dir == tmp_path / "linux-6.12.44"
    assert (s.src_dir / "Makefile").is_file() and (s.src_dir / "Kconfig").is_file()
    assert (s.kind, s.version, s.git_hash, s.ref) == ("tarball", "6.12.44", None, None)
    assert (s.is_temp, s.is_dirty, s.is_git) == (True, False, True)
    arch = source.arch_info().arch
    assert s.cache_key(KC) == f"6.12.44-tarball-{arch}-{KC}"
    assert s.source_meta() == {"type": "tarball"}


def test_acquire_tarball_rc(kernel_org: KernelOrg, tmp_path: Path) -> None:
    kernel_org.add_tarball("6.17-rc4")
    s = source.acquire_tarball("6.17-rc4", tmp_path)
    assert s.cache_key(KC).startswith("6.17-rc4-tarball-")


def test_acquire_tarball_of_the_fake_kernel(kernel_org: KernelOrg, tmp_path: Path) -> None:
    kernel_org.add_fake_kernel("6.14.9")
    s = source.acquire_tarball("6.14.9", tmp_path)
    assert (s.src_dir / "scripts" / "kconfig" / "conf.py").is_file()
    assert not (s.src_dir / ".git").exists()


def test_acquire_tarball_needs_an_exact_version(kernel_org: KernelOrg, tmp_path: Path) -> None:
    for spec in ("latest", "mainline", "6.1..6.12"):
        with pytest.raises(KtstrError, match="needs an exact version"):
            source.acquire_tarball(spec, tmp_path)
    assert kernel_org.requests == []


def test_acquire_tarball_unknown_version(kernel_org: KernelOrg, tmp_path: Path) -> None:
    with pytest.raises(
        KtstrError, match=r"^version 6\.12\.99 not found\. latest 6\.12\.x: 6\.12\.44"
    ):
        source.acquire_tarball("6.12.99", tmp_path)
    assert list(tmp_path.iterdir()) == []
