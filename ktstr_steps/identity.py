"""A build's whole identity (every input that shaped the kernel) and the sizes of what it made.

The cache key covers the inputs that decide whether two builds are the same
kernel (commit, baked fragment, extra fragments, base config). The identity
recorded here is wider: it also names the arch, the make variables, the
toolchain as its tools print their versions, and the host, so a rebuild can be
explained and a regression traced to the compiler that changed.

Shape (the build result object's ``identity``)::

    {"commit", "profile", "base_config": {"name", "hash"}, "ktstr_kconfig_hash",
     "fragments": [{"name", "hash"}], "arch", "make_vars": {..},
     "toolchain": {"gcc", "ld", "pahole"}, "host"}
"""

from __future__ import annotations

import functools
import re
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ktstr_steps.keys import crc32_hex

# The files that define a named base config target, relative to the tree
# (``{karch}`` is the kernel's arch directory). Their bytes are the target's hash:
# an edit to x86_64_defconfig changes what `make defconfig` produces.
_TARGET_FILES: dict[str, tuple[str, ...]] = {
    "defconfig": ("arch/{karch}/configs/{arch}_defconfig", "arch/{karch}/configs/defconfig"),
    "tinyconfig": ("kernel/configs/tiny.config", "arch/{karch}/configs/tiny.config"),
    "allnoconfig": (),
}
_KARCH = {"x86_64": "x86", "aarch64": "arm64"}

_ASSIGN_RE = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
_NOTSET_RE = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set$")


@functools.cache
def tool_version(tool: str) -> str | None:
    """The first line ``tool --version`` prints (gcc, ld, pahole), or None when it cannot run."""
    try:
        proc = subprocess.run(
            [tool, "--version"], capture_output=True, text=True, timeout=20,
            stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.strip():
            return line.strip()
    return None


def toolchain() -> dict[str, str | None]:
    """gcc, binutils' ld and pahole, each as the tool prints its version."""
    return {"gcc": tool_version("gcc"), "ld": tool_version("ld"), "pahole": tool_version("pahole")}


def make_vars_dict(make_vars: Sequence[str]) -> dict[str, str]:
    """``["ARCH=x86_64", "KCFLAGS=-Wno-error"]`` as ``{"ARCH": "x86_64", ...}``."""
    out: dict[str, str] = {}
    for item in make_vars:
        name, sep, value = item.partition("=")
        if sep:
            out[name] = value
    return out


def base_config_identity(base: str, src: Path | None, arch: str) -> dict[str, str | None]:
    """The base config's name and the CRC32 of what defines it.

    A file is hashed itself; a make target (``defconfig``...) by the tree's
    files that define it; None when neither can be read.
    """
    path = Path(base)
    if path.is_absolute():
        try:
            return {"name": path.name, "hash": crc32_hex(path.read_bytes())}
        except OSError:
            return {"name": path.name, "hash": None}
    if src is None:
        return {"name": base, "hash": None}
    data = b""
    karch = _KARCH.get(arch, arch)
    for rel in _TARGET_FILES.get(base, ()):
        f = Path(src) / rel.format(karch=karch, arch=arch)
        try:
            data += f.read_bytes()
        except OSError:
            continue
    return {"name": base, "hash": crc32_hex(data) if data else None}


def fragment_identity(name: str, text: str) -> dict[str, str]:
    """One extra fragment: its name and the CRC32 of its bytes (as ``extra_kconfig_hash``)."""
    return {"name": name, "hash": crc32_hex(text.encode("utf-8"))}


def build_identity(state: Any, make_vars: Sequence[str]) -> dict[str, Any]:
    """The identity of the build in ``state`` (a BuildState after its source is known).

    ``commit`` is the short git hash, ``v<version>`` for a release tarball, or None.
    """
    src = Path(state.source_dir) if state.source_dir else None
    commit = state.git_hash
    if commit is None and state.kind == "tarball" and state.version:
        commit = f"v{state.version}"  # a release tarball is its version's tag
    return {
        "commit": commit,
        "profile": state.profile,
        "base_config": base_config_identity(state.base_config, src, state.arch),
        "ktstr_kconfig_hash": state.kconfig_hash or None,
        "fragments": list(state.fragments),
        "arch": state.arch,
        "make_vars": make_vars_dict(make_vars),
        "toolchain": toolchain(),
        "host": socket.gethostname(),
    }


# -- outputs ------------------------------------------------------------------


def file_size(path: Path | str | None) -> int | None:
    """Size in bytes, or None when there is no such file."""
    if path is None:
        return None
    try:
        p = Path(path)
        return p.stat().st_size if p.is_file() else None
    except OSError:
        return None


def config_symbols(text: str) -> dict[str, str]:
    """The symbols a ``.config`` sets, ``{"SCHED_CLASS_EXT": "y", ...}``.

    ``# CONFIG_X is not set`` lines are left out: a symbol absent from the map
    is off, which keeps the map (stored per build) a third of the file's size.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _ASSIGN_RE.match(line.strip())
        if m and m.group(2) != "n":
            out[m.group(1)] = m.group(2)
    return out


def line_value(line: str) -> tuple[str | None, str | None]:
    """(symbol, value) of a fragment or ``.config`` line; ``is not set`` is ``"n"``."""
    line = line.strip()
    m = _ASSIGN_RE.match(line)
    if m:
        return m.group(1), m.group(2)
    m = _NOTSET_RE.match(line)
    if m:
        return m.group(1), "n"
    return None, None


def effective_value(symbols: dict[str, str], symbol: str) -> str:
    """A symbol's value in a config map from :func:`config_symbols` (absent = ``"n"``)."""
    return symbols.get(symbol, "n")
