"""RemoteLookup: a local miss asks the master, the shared store of every host's builds.

Every cache entry a build stores is published to the master with the size and
sha256 of each file (:mod:`ktstr_steps.buildsteps.publish`). After a lookup
that missed with a key any host could have built (a clean git tree, not
forced), this step asks the master's artifacts service for that key. On a hit
it transfers the entry's files to the worker with Buildbot's own
``downloadFile`` command and runs ``ktstr-ci phase install``, which checks
them against the recorded sha256s and stores them atomically in the host's
kernel cache: the build ends as ``remote-hit`` like a ``cache-hit``.

The transfer rides the worker's existing connection to the master, as the
publish uploads do: a worker on another host needs no route to the master's
web port and no web credentials, and the master reads the files in blocks
as the worker asks for them. The scan for the key runs in a thread on the
master.

A remote entry that is refused (a missing, short or tampered file) or that
cannot be transferred is a warning with one line saying why; the build goes
on as a miss and builds the kernel.
"""

from __future__ import annotations

from typing import Any

from buildbot.interfaces import IRenderable
from buildbot.process import remotecommand, remotetransfer
from buildbot.process.results import CANCELLED, SKIPPED, SUCCESS, WARNINGS

from ktstr_steps.buildsteps.base import KtstrCiStep, check_renderable_or, one_line, state_path
from ktstr_steps.buildsteps.lookup import HIT_BEFORE_CHECKOUT, REMOTE_KEY, commit_revision
from ktstr_steps.buildsteps.services import find_artifacts_service
from ktstr_steps.results import HIT_OUTCOMES, Outcome

# The key this build already asked the master for: the tree lookup does not ask twice.
REMOTE_TRIED = "remote_lookup_tried"
# Relative to the builder's workdir, like the state file; removed by phase install.
STAGING_DIR = "remote-entry"
# The files of a cache entry; a published .config or SHA256SUMS is not part of one.
ENTRY_NAMES = ("bzImage", "Image", "vmlinux", "metadata.json")
_BLOCKSIZE = 256 * 1024


def entry_files(files: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The cache entry's files among a published build's ``files``."""
    return {name: info for name, info in sorted(files.items())
            if name in ENTRY_NAMES and isinstance(info, dict)}


class RemoteLookup(KtstrCiStep):
    """Ask the master for the missed key; on a hit transfer and ``phase install`` the entry."""

    name = "remote-lookup"
    description = ["asking the master"]
    subcommand = ("phase", "install")
    renderables = ["state"]
    haltOnFailure = False
    flunkOnFailure = False
    warnOnFailure = True
    warnOnWarnings = True

    def __init__(self, *, state: str | IRenderable = state_path,
                 before_checkout: bool = False, **kwargs: Any) -> None:
        check_renderable_or(state, str, type(self), "state")
        self.state = state
        self.before_checkout = before_checkout
        kwargs.setdefault("hideStepIf", lambda results, step: results == SKIPPED)
        super().__init__(**kwargs)
        self.found: dict[str, Any] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.key = ""
        self.svc: Any = None

    def arguments(self) -> list[str]:
        expect = [f"--expect={name}={info.get('sha256')}:{info.get('size')}"
                  for name, info in self.files.items()]
        return ["--state", self.state, "--key", self.key, "--dir", STAGING_DIR, *expect,
                "--origin", self.origin()]

    def origin(self) -> str:
        f = self.found
        return f"{f.get('builder') or f.get('builder_dir')} build {f.get('number')} on the master"

    async def run(self) -> int:
        key = self.getProperty(REMOTE_KEY)
        if (not key or self.getProperty("kernel_outcome") in HIT_OUTCOMES
                or self.getProperty(REMOTE_TRIED) == key):
            self.descriptionDone = "nothing to ask the master"
            return SKIPPED
        svc = find_artifacts_service(self.master)
        finder = getattr(svc, "find_entry", None)
        if finder is None:
            self.descriptionDone = "no remote cache on this master"
            return SKIPPED
        self.setProperty(REMOTE_TRIED, key, type(self).__name__)
        self.key = str(key)
        found = await finder(key)
        if not found:
            self.descriptionDone = f"remote miss {key}"
            return SUCCESS
        self.found = found
        self.svc = svc
        self.files = entry_files(found.get("files") or {})
        await self.addLog("stdio")
        problem = await self.transfer()
        if self.stopped:
            self.descriptionDone = f"{self.name} interrupted"
            return CANCELLED
        if problem:
            await self.remove_staging()
            line = f"remote cache entry {key} not installed: {problem}; building it here"
            await self.getLog("stdio").addStderr(f"ktstr-ci: warning: {line}\n")
            self.descriptionDone = one_line(line)
            return WARNINGS
        return await super().run()

    async def transfer(self) -> str | None:
        """Each of the entry's files from the master to the staging dir; why not, or None."""
        await self.remove_staging()
        build_dir = self.found.get("dir") or ""
        for name in self.files:
            if self.stopped:
                return "stopped"
            source = f"{build_dir}/{name}"
            try:
                fp = open(source, "rb")  # noqa: SIM115 (closed by the reader or below)
            except OSError as exc:
                return f"{name} is not on the master ({exc.strerror})"
            reader = remotetransfer.FileReader(fp)
            args = {"maxsize": None, "reader": reader, "blocksize": _BLOCKSIZE,
                    "workdir": self.workdir, "mode": 0o644,
                    "workerdest": f"{STAGING_DIR}/{name}"}
            cmd = remotecommand.RemoteCommand("downloadFile", args)
            cmd.useLog(self.getLog("stdio"), False)
            try:
                await self.runCommand(cmd)
            finally:
                fp.close()
            if cmd.didFail():
                return f"the transfer of {name} failed"
        return None

    async def remove_staging(self) -> None:
        cmd = remotecommand.RemoteCommand("rmdir", {"dir": STAGING_DIR, "logEnviron": False})
        try:
            await self.runCommand(cmd)
        except Exception:  # phase install removes it too; a leftover is replaced next time
            pass

    async def interpret(self, data: dict[str, Any]) -> int:
        key = data.get("cache_key") or self.getProperty(REMOTE_KEY)
        if not data.get("installed"):
            # The whole line (key, both full checksums) is in the log; the summary is short.
            name, want, got = data.get("file"), data.get("expected"), data.get("got")
            if name and want:
                why = f"{name} sha256 {got[:12] if got else 'missing'}, recorded {want[:12]}"
            else:
                why = data.get("refused") or "phase install gave no reason"
            self.descriptionDone = one_line(f"remote entry refused: {why}; building it here")
            return WARNINGS
        self.set_prop("kernel_outcome", Outcome.REMOTE_HIT.value)
        self.set_prop("entry_dir", data.get("entry_dir"))
        self.set_prop("image_path", data.get("image_path"))
        self.set_prop("config_hash", data.get("config_hash"))
        if self.before_checkout:
            self.set_prop(HIT_BEFORE_CHECKOUT, True)
            # No checkout will run to say which commit this build is of.
            self.set_prop("got_revision", commit_revision(self))
        url_for = getattr(self.svc, "url_for", None)
        if url_for is not None and self.found.get("builder_dir") is not None:
            # The master already offers these files: the publish step links them instead
            # of uploading the same bytes again.
            url = url_for(str(self.found["builder_dir"]), int(self.found.get("number") or 0))
            self.set_prop("artifacts_url", url)
            await self.addURL("published files", url)
        self.descriptionDone = f"remote hit {key} (from {self.origin()})"
        return SUCCESS


__all__ = ["REMOTE_KEY", "REMOTE_TRIED", "RemoteLookup", "entry_files"]
