"""Debian's linux-source-6.12 tarball unpacked into a git tree."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

from tests.support.fakekernel import GIT_ENV

TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")


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
        gi.write_text(text[:cut])
    return tree


def git_commit_all(tree: Path) -> None:
    env = {**os.environ, **GIT_ENV}
    for argv in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "linux 6.12"]):
        subprocess.run(argv, cwd=tree, env=env, check=True)
