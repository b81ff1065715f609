"""Debian's linux-source-6.12 tarball unpacked into a git tree."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

from tests.support.fakekernel import GIT_ENV

TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")
UPSTREAM_TRACKED_DOTFILES = (".clang-format", ".cocciconfig", ".editorconfig", ".get_maintainer.ignore",
                             ".gitattributes", ".gitignore", ".mailmap", ".rustfmt.toml")


def extract_linux_source(dest: Path) -> Path:
    """Unpack Debian's tarball and drop Debian's top-level ignore-everything rule."""
    if not TARBALL.is_file():
        raise AssertionError(
            f"{TARBALL} is missing: `make test` installs Debian's linux-source-6.12 package"
        )
    with tarfile.open(TARBALL) as tf:
        tf.extractall(dest, filter="data")
    tree = dest / "linux-source-6.12"
    gi = tree / ".gitignore"
    text = gi.read_text()
    cut = text.find("#\n# Debian packaging")
    if cut >= 0:
        text = text[:cut]
    # Upstream's tree tracks these dot-files (Debian's copy of the file lost the
    # exceptions): without them a commit of this tree has no .gitignore at all, so
    # its clones (the service's trees) see every build output as untracked.
    gi.write_text(text + "".join(f"!{name}\n" for name in UPSTREAM_TRACKED_DOTFILES))
    return tree


def git_commit_all(tree: Path) -> None:
    """One commit of the whole tree; its pushes skip delta search.

    A first push of 80k loose objects with git's delta search takes ~110 s on 2
    cores, ~11 s without: that is git's cost, not the service's, and the tests
    and benchmarks that push this tree would otherwise count it.
    """
    env = {**os.environ, **GIT_ENV}
    for argv in (["git", "init", "-q"], ["git", "config", "pack.window", "0"],
                 ["git", "config", "pack.compression", "1"], ["git", "add", "-A"],
                 ["git", "commit", "-qm", "linux 6.12"]):
        subprocess.run(argv, cwd=tree, env=env, check=True)


def commit_one_file_change(tree: Path, rel: str, note: str) -> str:
    """A commit on top of HEAD that appends a comment to ``rel``; the work tree is untouched.

    Built with a temporary index, so the tree (and its build outputs) that other
    tests share keeps its files and its HEAD. Returns the new commit's id.
    """
    env = {**os.environ, **GIT_ENV, "GIT_INDEX_FILE": str(tree / ".git" / "ktstr-ci-tmp-index")}

    def git(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(["git", *args], cwd=tree, env=env, check=True, input=stdin,
                              capture_output=True, text=True).stdout.strip()

    text = git("show", f"HEAD:{rel}") + f"\n/* {note} */\n"
    try:
        git("read-tree", "HEAD")
        blob = git("hash-object", "-w", "--stdin", stdin=text)
        git("update-index", "--cacheinfo", f"100644,{blob},{rel}")
        return git("commit-tree", git("write-tree"), "-p", "HEAD", "-m", f"one file: {note}")
    finally:
        Path(env["GIT_INDEX_FILE"]).unlink(missing_ok=True)
