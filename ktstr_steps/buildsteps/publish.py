"""PublishKernel: upload a built kernel to the master, where its web server offers it for download.

The worker prepares the files (``ktstr-ci phase publish --json``,
:mod:`ktstr_steps.bundle`: the image, stripped vmlinux, metadata.json, the
``.config`` that built it, SHA256SUMS) and says what to upload; this step only
uploads them into ``<artifacts root>/<builder>/<buildnumber>/`` and writes
``files.json`` from the worker's answer. Nothing runs on the master against
the worker's files.

Files travel with Buildbot's ``uploadFile`` worker command, so the worker may be on
another host. Everything lands in a hidden ``.partial-*`` directory first and is
renamed into place at the end: the web server never serves half a build.

The step finds the master's artifacts service (``master/artifacts.py``) by its
name (:mod:`ktstr_steps.buildsteps.services`); without it the step is skipped.
A hit (``cache-hit`` or ``remote-hit``) is a kernel the master already offers
when an earlier build published the same cache key: its files are hard-linked
(copied across filesystems) from that build's directory into this build's,
with no worker command and no upload — the build still has its own download
directory, which retention treats like any other. Only when no published copy
is found, or it is incomplete, does a hit upload its files like a build.
The step never fails a build whose kernel was built: a problem gathering or
uploading the files is WARNINGS with the reason.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

from buildbot.process import remotecommand, remotetransfer
from buildbot.process.results import CANCELLED, FAILURE, SKIPPED, SUCCESS, WARNINGS
from twisted.internet import threads

from ktstr_steps.buildsteps.base import StateFileStep, safe_name
from ktstr_steps.buildsteps.services import ArtifactsService, find_artifacts_service
from ktstr_steps.bundle import CONFIG, MANIFEST, SUMS, VMLINUX
from ktstr_steps.cache.metadata import METADATA
from ktstr_steps.results import HIT_OUTCOMES

PARTIAL_PREFIX = ".partial-"


def builder_dir(builder: str) -> str:
    """The directory (and URL segment) of a builder: its name when that is path-safe."""
    return safe_name(builder, limit=100)


def finish_dir(partial: Path, final: Path, manifest: dict[str, Any]) -> list[str]:
    """Check the uploads' sizes, write files.json, move the directory into place.

    Returns the names whose uploaded size is not the one the worker announced
    (then nothing is moved).
    """
    wrong = [name for name, f in manifest["files"].items()
             if not (partial / name).is_file() or (partial / name).stat().st_size != f["size"]]
    if wrong:
        return wrong
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if final.exists():
        # A rebuild of the same build number (a master whose database was reset).
        shutil.rmtree(final)
    os.rename(partial, final)
    return []


def link_or_copy(src: Path, dest: Path) -> None:
    """A hard link of ``src`` at ``dest``; a copy where the filesystem cannot link."""
    try:
        os.link(src, dest)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copy2(src, dest)


def link_published(source: Path, partial: Path, final: Path,
                   manifest: dict[str, Any]) -> str | None:
    """Put the files of the published build ``source`` in place as build ``final``.

    ``manifest`` is the new build's files.json, whose ``files`` were read from
    ``source``'s. Returns why it could not (then nothing is moved), or None.
    """
    names = [*manifest["files"], SUMS]
    try:
        for name in names:
            link_or_copy(source / name, partial / name)
    except OSError as exc:
        return f"{exc.filename}: {exc.strerror}"
    wrong = finish_dir(partial, final, manifest)
    return f"{', '.join(wrong)} not the size published" if wrong else None


def read_manifest(build_dir: Path) -> dict[str, Any] | None:
    """A published build's files.json, or None when it is missing or not a JSON object."""
    try:
        value = json.loads((build_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and isinstance(value.get("files"), dict) else None


class PublishKernel(StateFileStep):
    """``ktstr-ci phase publish`` on the worker, then upload what it lists and link it."""

    name = "publish"
    description = ["publishing kernel"]
    subcommand = ("phase", "publish")
    haltOnFailure = False
    flunkOnFailure = False
    warnOnFailure = True
    warnOnWarnings = True

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("hideStepIf", lambda results, step: results == SKIPPED)
        super().__init__(**kwargs)
        self.svc: ArtifactsService | None = None

    def service(self) -> ArtifactsService | None:
        return find_artifacts_service(self.master)

    def interpret_failure(self, data: dict[str, Any]) -> str:
        return f"nothing published: {super().interpret_failure(data)}"

    async def run(self) -> int:
        if not build_still_good(self):
            # Checked here, not in doStepIf: a failed build's step list stays uniform.
            self.descriptionDone = "build failed: nothing to publish"
            return SKIPPED
        self.svc = self.service()
        if self.svc is None:
            self.descriptionDone = "downloads not configured on this master"
            return SKIPPED
        if self.getProperty("kernel_outcome") in HIT_OUTCOMES:
            linked = await self.link_hit(self.svc)
            if linked is not None:
                return linked
        result = await super().run()
        # The kernel was built: a publish that went wrong is a warning, never a failure.
        return WARNINGS if result == FAILURE else result

    async def interpret(self, data: dict[str, Any]) -> int:
        if not data.get("publish"):
            self.descriptionDone = f"nothing to publish: {data.get('reason') or 'no reason given'}"
            return SKIPPED
        svc = self.svc
        assert svc is not None
        bdir, number, final, partial = self.build_dirs(svc)
        try:
            result = await self._publish(svc, data, partial, final, bdir, number)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
            await self.remove_bundle(str(data.get("dir") or ""))
        if result in (SUCCESS, WARNINGS):
            await svc.published(bdir)
        return result

    def build_dirs(self, svc: ArtifactsService) -> tuple[str, int, Path, Path]:
        """(builder dir, number, final dir, a fresh empty partial dir) of this build."""
        bdir = builder_dir(str(self.getProperty("buildername") or "builder"))
        number = int(self.getProperty("buildnumber") or 0)
        final = svc.root / bdir / str(number)
        partial = svc.root / bdir / f"{PARTIAL_PREFIX}{number}-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        return bdir, number, final, partial

    def manifest(self, number: int, source: dict[str, Any], **over: Any) -> dict[str, Any]:
        """This build's files.json: what the build is, and ``source``'s description of the files."""
        return {
            "builder": self.getProperty("buildername"),
            "build_number": number,
            "buildid": self.build.buildid,
            "branch": self.getProperty("branch"),
            "revision": self.getProperty("got_revision") or self.getProperty("revision"),
            "outcome": source.get("outcome"),
            "cache_key": source.get("cache_key"),
            "diff_hash": source.get("diff_hash"),
            "vmlinux_from": source.get("vmlinux_from"),
            "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "missing": list(source.get("missing") or []),
            "notes": list(source.get("notes") or []),
            "files": {name: {"size": f.get("size"), "sha256": f.get("sha256")}
                      for name, f in (source.get("files") or {}).items()},
            **over,
        }

    async def link_hit(self, svc: ArtifactsService) -> int | None:
        """A hit whose key the master published already: link those files; None = upload."""
        key = self.getProperty("cache_key")
        finder = getattr(svc, "find_entry", None)
        if not key or finder is None:
            return None
        found = await finder(str(key)) or {}
        if not found.get("dir"):
            return None
        source = Path(str(found["dir"]))
        published = await threads.deferToThread(read_manifest, source)
        if published is None:
            return None
        bdir, number, final, partial = self.build_dirs(svc)
        manifest = self.manifest(number, published, outcome=self.getProperty("kernel_outcome"))
        try:
            problem = await threads.deferToThread(link_published, source, partial, final,
                                                  manifest)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        origin = f"{published.get('builder') or found.get('builder_dir')} build {found.get('number')}"
        if problem:
            await self.addCompleteLog(
                "published-copy", f"ktstr-ci: the copy published by {origin} is not usable "
                f"({problem}); uploading this build's files\n")
            return None
        await self.link_files(svc, bdir, number, manifest)
        self.descriptionDone += f" (linked from {origin})"
        await svc.published(bdir)
        return SUCCESS

    async def link_files(self, svc: ArtifactsService, bdir: str, number: int,
                         manifest: dict[str, Any]) -> None:
        """The step's download links, ``artifacts_url`` and summary for a published directory."""
        files = manifest["files"]
        names = sorted(files, key=_link_order)
        for name in names:
            size = files[name].get("size") or 0
            await self.addURL(f"{name} ({_human(size)})", svc.url_for(bdir, number, name))
        await self.addURL("all files", svc.url_for(bdir, number))
        self.setProperty("artifacts_url", svc.url_for(bdir, number), type(self).__name__)
        missing = manifest["missing"]
        self.descriptionDone = f"published {', '.join(names)}" + (
            f" (no {', '.join(sorted(missing))})" if missing else "")

    # -- transfer --------------------------------------------------------------

    async def upload(self, workersrc: str, dest: Path, maxsize: int | None) -> bool:
        writer = remotetransfer.FileWriter(str(dest), maxsize, 0o644)
        args = {"workdir": self.workdir, "writer": writer, "maxsize": maxsize,
                "blocksize": 256 * 1024, "keepstamp": False, "workersrc": workersrc}
        cmd = remotecommand.RemoteCommand("uploadFile", args)
        cmd.useLog(self.getLog("stdio"), False)
        try:
            await self.runCommand(cmd)
        finally:
            writer.cancel()  # no-op after a clean close; drops a truncated file otherwise
        if cmd.didFail():
            # Includes a file over maxsize: the worker stops and reports the truncation.
            writer.purge()
            return False
        return True

    async def remove_bundle(self, path: str) -> None:
        """Drop the worker's copy once uploaded; a failure only leaves it for the next build."""
        if not path or self.stopped:
            return
        cmd = remotecommand.RemoteCommand("rmdir", {"dir": path, "logEnviron": False})
        try:
            await self.runCommand(cmd)
        except Exception:  # the next publish of this builder replaces the directory anyway
            pass

    async def _publish(self, svc: ArtifactsService, data: dict[str, Any], partial: Path,
                       final: Path, bdir: str, number: int) -> int:
        files: dict[str, dict[str, Any]] = data.get("files") or {}
        uploads = [(name, str(f.get("path") or "")) for name, f in sorted(files.items())]
        uploads.append((SUMS, str(data.get("sums") or "")))
        for name, path in uploads:
            if self.stopped:
                return CANCELLED
            if not path or not await self.upload(path, partial / name, svc.max_file_bytes):
                if self.stopped:
                    return CANCELLED
                self.descriptionDone = f"upload of {name} ({path}) failed"
                return WARNINGS
        manifest = self.manifest(number, data)
        wrong = await threads.deferToThread(finish_dir, partial, final, manifest)
        if wrong:
            self.descriptionDone = f"upload of {', '.join(wrong)} is not the size the worker sent"
            return WARNINGS
        for note in manifest["notes"]:
            await self.getLog("stdio").addStderr(note + "\n")
        await self.link_files(svc, bdir, number, manifest)
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


__all__ = ["PARTIAL_PREFIX", "PublishKernel", "builder_dir"]
