"""PublishKernel: copy a built kernel to the master, where its web server offers it for download.

What is published, into ``<artifacts root>/<builder>/<buildnumber>/``:

* the kernel image (``bzImage`` / ``Image``), ``vmlinux`` and ``metadata.json``:
  for a kernel in the cache (``cached``, ``cache-hit``) the cache entry's files,
  byte for byte (its ``vmlinux`` is the cache's stripped one); for a kernel that
  was built but not cached (``dirty-not-cached`` try builds, ``changed-during-build``,
  ``store-failed``, ...) the source tree's image, the source tree's ``vmlinux``
  stripped on the master with the cache's own :func:`ktstr_steps.strip.strip_vmlinux`
  (raw if both strip passes fail, as the cache does), and a ``metadata.json`` written
  with the cache's schema from the build's state;
* the source tree's ``.config``, only when its CRC32 is the kernel's ``config_hash``
  (on a cache hit the tree may never have been configured for this kernel);
* ``files.json`` (what was published, sizes and sha256, outcome, cache key, diff
  hash) and ``SHA256SUMS``.

Files travel with Buildbot's ``uploadFile`` worker command, so the worker may be on
another host. Everything lands in a hidden ``.partial-*`` directory first and is
renamed into place at the end: the web server never serves half a build.

The step finds the master's artifacts service (``master/artifacts.py``) by name;
without it the step is skipped. The step never fails a build whose kernel was
built: an upload problem is WARNINGS with the reason.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Any, Protocol

from buildbot.interfaces import IRenderable
from buildbot.process import buildstep, remotecommand, remotetransfer
from buildbot.process.results import CANCELLED, SKIPPED, SUCCESS, WARNINGS
from buildbot.steps.worker import CompositeStepMixin
from twisted.internet import threads

from ktstr_steps.buildsteps.base import check_renderable_or, safe_name, state_path

SERVICE_NAME = "ktstr_artifacts"
MANIFEST = "files.json"
SUMS = "SHA256SUMS"
METADATA = "metadata.json"
CONFIG = ".config"
VMLINUX = "vmlinux"
IMAGE_NAMES = ("bzImage", "Image")
# Every name the web server will ever serve from a build directory.
PUBLISHED_NAMES = frozenset({*IMAGE_NAMES, VMLINUX, CONFIG, METADATA, MANIFEST, SUMS})
PARTIAL_PREFIX = ".partial-"
CACHED_OUTCOMES = ("cached", "cache-hit")
# Built but kept out of the cache: the kernel exists in the source tree.
NOT_CACHED_OUTCOMES = ("dirty-not-cached", "non-git-not-cached", "changed-during-build",
                       "store-failed")
STATE_MAX_BYTES = 4 << 20


class ArtifactsService(Protocol):
    """What the step needs from the master's artifacts service."""

    root: Path
    max_file_bytes: int | None

    def url_for(self, builder_dir: str, number: int, name: str = "") -> str: ...

    def published(self, builder_dir: str) -> Any: ...  # Deferred; applies retention


def builder_dir(builder: str) -> str:
    """The directory (and URL segment) of a builder: its name when that is path-safe."""
    return safe_name(builder, limit=100)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def crc32_file(path: Path) -> str:
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            crc = zlib.crc32(block, crc)
    return f"{crc & 0xFFFFFFFF:08x}"


def not_cached_metadata(state: dict[str, Any], *, has_vmlinux: bool, stripped: bool) -> str:
    """metadata.json for a kernel that never entered the cache, in the cache's schema."""
    from ktstr_steps import cache

    meta = cache.KernelMetadata(
        source=cache.KernelSource.from_json(state.get("source_meta") or {"type": "tarball"}),
        arch=str(state.get("arch") or ""),
        image_name=str(state.get("image_name") or "bzImage"),
        built_at=cache.utc_now(),
        version=state.get("version"),
        config_hash=state.get("config_hash"),
        ktstr_kconfig_hash=state.get("kconfig_hash") or None,
        extra_kconfig_hash=state.get("extra_kconfig_hash"),
        has_vmlinux=has_vmlinux,
        vmlinux_stripped=stripped,
    )
    return meta.dumps()


def strip_in_place(raw: Path, dst: Path) -> bool:
    """Strip ``raw`` into ``dst`` like the cache does; on failure keep it raw. True = stripped."""
    from ktstr_steps.strip import StripError, strip_vmlinux

    try:
        strip_vmlinux(raw, dst)
        stripped = True
    except (StripError, OSError):
        os.replace(raw, dst)
        stripped = False
    raw.unlink(missing_ok=True)
    dst.chmod(0o644)  # objcopy keeps the executable bit; a download needs none
    return stripped


def finish_dir(partial: Path, final: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file, write files.json and SHA256SUMS, move the directory into place."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(partial.iterdir()):
        if path.name in PUBLISHED_NAMES and path.is_file():
            files[path.name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {**manifest, "files": files}
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (partial / SUMS).write_text("".join(f"{v['sha256']}  {k}\n" for k, v in files.items()))
    if final.exists():
        # A rebuild of the same build number (a master whose database was reset).
        shutil.rmtree(final)
    os.rename(partial, final)
    return manifest


class PublishKernel(CompositeStepMixin, buildstep.BuildStep):
    """Upload the build's kernel files to ``<artifacts root>/<builder>/<number>/`` and link them."""

    name = "publish"
    description = ["publishing kernel"]
    renderables = ["state"]
    haltOnFailure = False
    flunkOnFailure = False
    warnOnFailure = True
    warnOnWarnings = True
    # CompositeStepMixin's remote commands read it; the worker environment may hold secrets.
    logEnviron = False

    def __init__(self, *, state: str | IRenderable = state_path, **kwargs: Any) -> None:
        check_renderable_or(state, str, type(self), "state")
        self.state = state
        kwargs.setdefault("hideStepIf", lambda results, step: results == SKIPPED)
        super().__init__(**kwargs)

    # -- finding things --------------------------------------------------------

    def service(self) -> ArtifactsService | None:
        # Buildbot 4.3 keeps c['services'] in the service manager, not master.namedServices.
        manager = getattr(self.master, "service_manager", None)
        return (getattr(manager, "namedServices", None) or {}).get(SERVICE_NAME)

    async def read_state(self) -> dict[str, Any] | None:
        text = await self.getFileContentFromWorker(self.state, abandonOnFailure=False)
        if not text or len(text) > STATE_MAX_BYTES:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def sources(self, state: dict[str, Any]) -> tuple[dict[str, str], bool] | str:
        """{published name: absolute worker path} and whether vmlinux needs stripping,
        or why there is nothing to publish."""
        outcome = state.get("outcome")
        src = str(state.get("source_dir") or "")
        image_name = str(state.get("image_name") or "bzImage")
        if image_name not in IMAGE_NAMES:
            return f"unexpected image name {image_name!r}"
        if outcome in CACHED_OUTCOMES:
            entry = str(state.get("entry_dir") or "")
            if not entry:
                return f"{outcome} without a cache entry directory"
            files = {image_name: f"{entry}/{image_name}", VMLINUX: f"{entry}/{VMLINUX}",
                     METADATA: f"{entry}/{METADATA}"}
            if src:
                files[CONFIG] = f"{src}/{CONFIG}"
            return files, False
        if outcome in NOT_CACHED_OUTCOMES:
            image = str(state.get("image_path") or "")
            if not image or not src:
                return f"{outcome} without an image path"
            return {image_name: image, VMLINUX: f"{src}/{VMLINUX}", CONFIG: f"{src}/{CONFIG}"}, True
        return f"no built kernel (outcome {outcome or 'unknown'})"

    # -- transfer --------------------------------------------------------------

    async def exists(self, path: str) -> bool:
        return bool(await self.pathExists(path))

    async def upload(self, workersrc: str, dest: Path, maxsize: int | None) -> bool:
        writer = remotetransfer.FileWriter(str(dest), maxsize, 0o644)
        args = {"workdir": self.workdir, "writer": writer, "maxsize": maxsize,
                "blocksize": 256 * 1024, "keepstamp": False, "workersrc": workersrc}
        cmd = remotecommand.RemoteCommand("uploadFile", args)
        cmd.useLog(self.stdio, False)
        try:
            await self.runCommand(cmd)
        finally:
            writer.cancel()  # no-op after a clean close; drops a truncated file otherwise
        if cmd.didFail():
            # Includes a file over maxsize: the worker stops and reports the truncation.
            writer.purge()
            return False
        return True

    # -- the run ---------------------------------------------------------------

    async def run(self) -> int:
        self.stdio = await self.addLog("stdio")
        if not build_still_good(self):
            # Checked here, not in doStepIf: a failed build's step list stays uniform.
            self.descriptionDone = "build failed: nothing to publish"
            return SKIPPED
        svc = self.service()
        if svc is None:
            self.descriptionDone = "downloads not configured on this master"
            return SKIPPED
        state = await self.read_state()
        if state is None:
            self.descriptionDone = "no build state on the worker: nothing to publish"
            return WARNINGS
        plan = self.sources(state)
        if isinstance(plan, str):
            self.descriptionDone = f"nothing to publish: {plan}"
            return SKIPPED
        files, strip = plan
        builder = str(self.getProperty("buildername") or "builder")
        number = int(self.getProperty("buildnumber") or 0)
        bdir = builder_dir(builder)
        final = svc.root / bdir / str(number)
        partial = svc.root / bdir / f"{PARTIAL_PREFIX}{number}-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            result = await self._publish(svc, state, files, strip, partial, final, bdir, number)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        if result in (SUCCESS, WARNINGS):
            await svc.published(bdir)
        return result

    async def _publish(self, svc: ArtifactsService, state: dict[str, Any], files: dict[str, str],
                       strip: bool, partial: Path, final: Path, bdir: str, number: int) -> int:
        missing: list[str] = []
        for name, path in files.items():
            if self.stopped:
                return CANCELLED
            if name in (VMLINUX, CONFIG) and not await self.exists(path):
                missing.append(name)  # a kernel without vmlinux / a tree without .config
                continue
            dest = partial / (f"{VMLINUX}.raw" if name == VMLINUX and strip else name)
            if not await self.upload(path, dest, svc.max_file_bytes):
                if self.stopped:
                    return CANCELLED
                self.descriptionDone = f"upload of {name} ({path}) failed"
                return WARNINGS
        notes: list[str] = []
        stripped = False
        if strip and (partial / f"{VMLINUX}.raw").exists():
            stripped = await threads.deferToThread(
                strip_in_place, partial / f"{VMLINUX}.raw", partial / VMLINUX)
            if not stripped:
                notes.append("vmlinux could not be stripped; it is the source tree's file")
        if strip:
            (partial / METADATA).write_text(not_cached_metadata(
                state, has_vmlinux=(partial / VMLINUX).exists(), stripped=stripped))
        config = partial / CONFIG
        if config.exists():
            want = state.get("config_hash")
            got = await threads.deferToThread(crc32_file, config)
            if want and got != want:
                config.unlink()
                missing.append(CONFIG)
                notes.append(f"the tree's .config (crc32 {got}) is not the one this kernel was "
                             f"built from ({want})")
        manifest = {
            "builder": self.getProperty("buildername"),
            "build_number": number,
            "buildid": self.build.buildid,
            "branch": self.getProperty("branch"),
            "revision": self.getProperty("got_revision") or self.getProperty("revision"),
            "outcome": state.get("outcome"),
            "cache_key": state.get("cache_key") or None,
            "diff_hash": state.get("diff_hash"),
            "vmlinux_from": "cache entry" if not strip else (
                "source tree, stripped on the master" if stripped else "source tree (raw)"),
            "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "missing": sorted(missing),
            "notes": notes,
        }
        manifest = await threads.deferToThread(finish_dir, partial, final, manifest)
        for name in sorted(manifest["files"], key=_link_order):
            if name in (MANIFEST, SUMS):
                continue
            size = manifest["files"][name]["size"]
            await self.addURL(f"{name} ({_human(size)})", svc.url_for(bdir, number, name))
        await self.addURL("all files", svc.url_for(bdir, number))
        self.setProperty("artifacts_url", svc.url_for(bdir, number), type(self).__name__)
        for note in notes:
            await self.stdio.addStderr(note + "\n")
        names = [n for n in sorted(manifest["files"], key=_link_order) if n not in (MANIFEST, SUMS)]
        self.descriptionDone = f"published {', '.join(names)}" + (
            f" (no {', '.join(sorted(missing))})" if missing else "")
        return SUCCESS


def build_still_good(step: Any) -> bool:
    """Only a build whose steps so far succeeded has a kernel worth publishing."""
    return getattr(step.build, "results", SUCCESS) in (SUCCESS, WARNINGS)


def _link_order(name: str) -> tuple[int, str]:
    order = {"bzImage": 0, "Image": 0, VMLINUX: 1, CONFIG: 2, METADATA: 3}
    return order.get(name, 9), name


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


__all__ = ["PUBLISHED_NAMES", "SERVICE_NAME", "PublishKernel", "builder_dir"]
