"""The publish bundle: one built kernel's downloadable files, prepared on the worker.

``ktstr-ci phase publish`` gathers into one directory what the master offers
for download, so the master only uploads and never opens a worker's files:

* the kernel image (``bzImage`` / ``Image``), ``vmlinux`` and ``metadata.json``:
  for a kernel in the cache (``cached``, ``cache-hit``) the cache entry's files,
  byte for byte (its ``vmlinux`` is the cache's stripped one); for a kernel that
  was built but not cached (``dirty-not-cached`` try builds,
  ``changed-during-build``, ``store-failed``, ...) the source tree's image, its
  ``vmlinux`` stripped like the cache strips (raw if both strip passes fail),
  and a ``metadata.json`` in the cache's schema written from the build's state;
* the source tree's ``.config``, only when its CRC32 is the kernel's
  ``config_hash`` (on a cache hit the tree may never have been configured for
  this kernel);
* ``SHA256SUMS`` of those files.

The answer lists each file with its size and sha256, what is missing and why,
and where vmlinux came from; the master writes ``files.json`` from it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

from ktstr_steps.buildstate import BuildState
from ktstr_steps.cache.metadata import METADATA, KernelMetadata, KernelSource, utc_now
from ktstr_steps.errors import KtstrError, os_error_text
from ktstr_steps.results import CACHED_OUTCOMES, NOT_CACHED_OUTCOMES
from ktstr_steps.strip import StripError, strip_vmlinux

MANIFEST = "files.json"
SUMS = "SHA256SUMS"
CONFIG = ".config"
VMLINUX = "vmlinux"
IMAGE_NAMES = ("bzImage", "Image")
# Every name the master's web server will ever serve from a build directory.
PUBLISHED_NAMES = frozenset({*IMAGE_NAMES, VMLINUX, CONFIG, METADATA, MANIFEST, SUMS})
# The bundle's directory next to the state file, unless the command names one.
DEFAULT_DIR = "publish"
_BLOCK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def crc32_file(path: Path) -> str:
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            crc = zlib.crc32(block, crc)
    return f"{crc & 0xFFFFFFFF:08x}"


def sources(state: BuildState) -> tuple[dict[str, Path], bool] | str:
    """{published name: where it is now} and whether vmlinux needs stripping,
    or why there is nothing to publish."""
    outcome = state.outcome
    src = state.source_dir
    image_name = state.image_name or "bzImage"
    if image_name not in IMAGE_NAMES:
        return f"unexpected image name {image_name!r}"
    if outcome in CACHED_OUTCOMES:
        if not state.entry_dir:
            return f"{outcome} without a cache entry directory"
        entry = Path(state.entry_dir)
        files = {image_name: entry / image_name, VMLINUX: entry / VMLINUX,
                 METADATA: entry / METADATA}  # fmt: skip
        if src:
            files[CONFIG] = Path(src) / CONFIG
        return files, False
    if outcome in NOT_CACHED_OUTCOMES:
        if not state.image_path or not src:
            return f"{outcome} without an image path"
        files = {image_name: Path(state.image_path), VMLINUX: Path(src) / VMLINUX,
                 CONFIG: Path(src) / CONFIG}  # fmt: skip
        return files, True
    return f"no built kernel (outcome {outcome or 'unknown'})"


def not_cached_metadata(state: BuildState, *, has_vmlinux: bool, stripped: bool) -> str:
    """metadata.json for a kernel that never entered the cache, in the cache's schema."""
    meta = KernelMetadata(
        source=KernelSource.from_json(state.source_meta or {"type": "tarball"}),
        arch=state.arch,
        image_name=state.image_name or "bzImage",
        built_at=utc_now(),
        version=state.version,
        config_hash=state.config_hash,
        ktstr_kconfig_hash=state.kconfig_hash or None,
        extra_kconfig_hash=state.extra_kconfig_hash,
        has_vmlinux=has_vmlinux,
        vmlinux_stripped=stripped,
    )
    return meta.dumps()


def _take(src: Path, dst: Path, *, link: bool) -> None:
    """``src`` as ``dst``: a hard link to a cache entry's file (entries are replaced, never
    rewritten), else a copy, so the bundle stays what was hashed while it is uploaded."""
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another filesystem: copy
    shutil.copyfile(src, dst)


def _strip_into(raw: Path, dst: Path) -> bool:
    """Strip ``raw`` into ``dst`` like the cache does; on failure copy it raw. True = stripped."""
    try:
        strip_vmlinux(raw, dst)
        stripped = True
    except (StripError, OSError):
        dst.unlink(missing_ok=True)
        shutil.copyfile(raw, dst)
        stripped = False
    dst.chmod(0o644)  # objcopy keeps the executable bit; a download needs none
    return stripped


def prepare(state: BuildState, out_dir: Path) -> dict[str, Any]:
    """Gather the bundle of ``state``'s kernel into ``out_dir`` (emptied first): the answer
    of ``phase publish``. ``publish`` is false, with the ``reason``, when there is none."""
    plan = sources(state)
    if isinstance(plan, str):
        return {"ok": True, "publish": False, "reason": plan}
    files, strip = plan
    shutil.rmtree(out_dir, ignore_errors=True)
    try:
        out_dir.mkdir(parents=True)
    except OSError as exc:
        raise KtstrError(f"cannot create the publish directory {out_dir}: "
                         f"{os_error_text(exc)}", kind="publish-failed") from None
    missing: list[str] = []
    notes: list[str] = []
    stripped = False
    for name, path in files.items():
        if not path.is_file():
            if name in (VMLINUX, CONFIG):
                missing.append(name)  # a kernel without vmlinux / a tree without .config
                continue
            raise KtstrError(f"{name} of this build is missing ({path})", kind="publish-failed")
        try:
            if name == VMLINUX and strip:
                stripped = _strip_into(path, out_dir / VMLINUX)
                if not stripped:
                    notes.append("vmlinux could not be stripped; it is the source tree's file")
            else:
                _take(path, out_dir / name, link=not strip and name != CONFIG)
        except OSError as exc:
            raise KtstrError(f"cannot gather {name} ({path}) for publishing: "
                             f"{os_error_text(exc)}", kind="publish-failed") from None
    if strip:
        (out_dir / METADATA).write_text(not_cached_metadata(
            state, has_vmlinux=(out_dir / VMLINUX).exists(), stripped=stripped))
    config = out_dir / CONFIG
    if config.exists():
        got = crc32_file(config)
        if state.config_hash and got != state.config_hash:
            config.unlink()
            missing.append(CONFIG)
            notes.append(f"the tree's .config (crc32 {got}) is not the one this kernel was "
                         f"built from ({state.config_hash})")
    listed = {}
    for path in sorted(out_dir.iterdir()):
        if path.name in PUBLISHED_NAMES and path.is_file():
            listed[path.name] = {"path": str(path.resolve()), "size": path.stat().st_size,
                                 "sha256": sha256_file(path)}  # fmt: skip
    (out_dir / SUMS).write_text("".join(f"{v['sha256']}  {k}\n" for k, v in listed.items()))
    return {
        "ok": True,
        "publish": True,
        "dir": str(out_dir.resolve()),
        "files": listed,
        "sums": str((out_dir / SUMS).resolve()),
        "outcome": state.outcome,
        "cache_key": state.cache_key or None,
        "diff_hash": state.diff_hash,
        "vmlinux_from": "cache entry" if not strip else (
            "source tree, stripped on the worker" if stripped else "source tree (raw)"),
        "missing": sorted(missing),
        "notes": notes,
    }
