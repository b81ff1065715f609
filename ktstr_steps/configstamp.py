"""The configure stamp: what a profile build's last configure of a tree was made from.

A profile build configures its tree from the profile's inputs alone (base
config, ktstr.kconfig, extra fragments, arch, make variables). When those
inputs, the tree's ``.config`` and the tree's Kconfig files are all what they
were at the last configure, running it again (base config, fragment merge,
``make olddefconfig``) would write the same ``.config``: the stamp lets the
configure phase skip it, the larger part of a one-file rebuild's overhead.

The stamp is a hidden file at the top of the tree: the kernel's own
``.gitignore`` ignores dot-files, so it never makes the tree dirty, and
``make mrproper`` leaves it but deletes ``.config``, so the stamp no longer
matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path, PurePosixPath

from ktstr_steps.kconfig import BASE_CONFIGS
from ktstr_steps.keys import crc32_hex

STAMP_NAME = ".ktstr-ci-configure.json"

# Paths whose change can change what olddefconfig writes for the same inputs: every
# Kconfig file, the kconfig tool, and the config fragments the base targets read.
_KCONFIG_DIRS = ("scripts/kconfig/", "kernel/configs/")


def inputs_digest(*, base_config: str, baked: str, extra: str | None, arch: str,
                  make_vars: list[str]) -> str:
    """sha256 over everything a profile's configure reads besides the tree."""
    base = base_config
    if base_config not in BASE_CONFIGS:
        # A config file: its bytes are the input, wherever it lives.
        try:
            base = "file:" + hashlib.sha256(Path(base_config).read_bytes()).hexdigest()
        except OSError:
            base = f"unreadable:{base_config}"
    doc = {"base": base, "baked": baked, "extra": extra, "arch": arch, "make_vars": make_vars}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _config_crc(tree: Path) -> str | None:
    try:
        return crc32_hex((tree / ".config").read_bytes())
    except OSError:
        return None


def _head(tree: Path) -> str | None:
    try:
        proc = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=tree,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def touches_kconfig(path: str) -> bool:
    """Whether a changed file can change the configuration olddefconfig resolves."""
    p = PurePosixPath(path)
    if p.name.startswith("Kconfig"):
        return True
    if path.startswith(_KCONFIG_DIRS):
        return True
    # arch/<arch>/configs/*: the defconfig files of `make defconfig`.
    return len(p.parts) >= 3 and p.parts[0] == "arch" and p.parts[2] == "configs"


def _kconfig_changed(tree: Path, old: str, new: str) -> bool:
    """True when a Kconfig input differs between two commits, or when git cannot tell."""
    if old == new:
        return False
    try:
        proc = subprocess.run(["git", "diff", "--name-only", "--no-renames", old, new],
                              cwd=tree, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return True
    if proc.returncode != 0:
        return True  # e.g. the old commit is gone: configure again
    return any(touches_kconfig(line) for line in proc.stdout.splitlines() if line)


def read(tree: Path) -> dict | None:
    try:
        data = json.loads((tree / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def unchanged(tree: Path, digest: str) -> str | None:
    """Why configure may be skipped (None: it must run).

    Only a git tree qualifies: without a commit there is no telling whether
    its Kconfig files changed.
    """
    stamp = read(tree)
    if stamp is None or stamp.get("inputs") != digest:
        return None
    crc = _config_crc(tree)
    if crc is None or stamp.get("config_crc") != crc:
        return None
    old, head = stamp.get("head"), _head(tree)
    if not isinstance(old, str) or head is None or _kconfig_changed(tree, old, head):
        return None
    return "unchanged inputs"


def write(tree: Path, digest: str) -> None:
    """Stamp the tree's current ``.config`` as configured from ``digest`` at its HEAD."""
    stamp = {"inputs": digest, "config_crc": _config_crc(tree), "head": _head(tree)}
    tmp = tree / (STAMP_NAME + ".tmp")
    tmp.write_text(json.dumps(stamp, sort_keys=True) + "\n")
    os.replace(tmp, tree / STAMP_NAME)


def remove(tree: Path) -> None:
    """A configure the stamp cannot describe (a patched tree): the next one must run."""
    (tree / STAMP_NAME).unlink(missing_ok=True)
