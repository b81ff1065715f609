"""A copied kernel tree's build records name the copy, not the tree it was copied from.

kbuild records every object's command line and dependencies in a ``.<obj>.cmd``
file and rebuilds an object whose recorded command differs from the current
one. Its own records use paths relative to the tree, but the tools it builds
for itself are built by ``tools/build`` with absolute paths (``make -C
tools/objtool O=$(abspath .)/tools/objtool srctree=$(realpath .)``, the same
for ``resolve_btfids`` and their libsubcmd and libbpf). In a copy at another
path those command lines differ, so objtool is rebuilt, and since every object
that objtool checks lists the objtool binary among its dependencies, make then
recompiles the whole kernel: measured on tiny 6.12 (ktstr's config), 186 s for
a one-file change that takes 13 s in the tree it was copied from.

Rewriting the old tree's absolute path to the new one in those records makes
the copy's tools up to date where they are (their sources are the same files,
times kept), so only what the checkout changed is rebuilt. Only ``.cmd``
files are rewritten: binaries that embed the old path (debug info) are
outputs, never compared; ``compile_commands.json`` is written anew after every
build.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_CMD_NAME = re.compile(r"^\..+\.cmd$")


def _old_path_re(old: str) -> re.Pattern[bytes]:
    # The old path itself, not a longer name it starts (".../linux-a" in ".../linux-ab").
    return re.compile(re.escape(old.encode()) + rb"(?![^/\s:;=,)'\"\\])")


def relocate_build_records(tree: Path, old: Path, new: Path | None = None) -> int:
    """Rewrite ``old`` to ``new`` (default: ``tree``) in ``tree``'s ``.*.cmd`` files; how many.

    Paths are compared as make saw them: kbuild takes ``realpath`` of the
    source tree and the physical working directory, so symlinks are resolved
    on both sides. Each rewritten file keeps its modification time.
    """
    old_s = os.path.realpath(old)
    new_s = os.path.realpath(new if new is not None else tree)
    if old_s == new_s:
        return 0
    pattern, replacement = _old_path_re(old_s), new_s.encode()
    needle = old_s.encode()
    changed = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        if dirpath == str(tree):
            dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            if not _CMD_NAME.match(name):
                continue
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                data = f.read()
            if needle not in data:
                continue
            st = os.stat(path)
            fixed = pattern.sub(replacement, data)
            if fixed == data:
                continue
            # A new file renamed over the old one: never write through to another
            # tree's inode (a copy may share files with its seed).
            tmp = path + ".ktstr-ci-relocate"
            with open(tmp, "wb") as f:
                f.write(fixed)
            os.chmod(tmp, st.st_mode & 0o7777)
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.replace(tmp, path)
            changed += 1
    return changed
