"""The result contract of a kernel build: its outcome, its error kinds, the worker command's JSON.

One vocabulary for every side. The pipeline sets the outcome and the error
kinds; the Buildbot steps read them from the worker command's JSON; the records
database stores the outcome as the same strings (its rows and the builds' REST
properties keep them); the dashboard colours each outcome. Nothing else writes
an outcome or a kind out by hand: they import them from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """What became of one kernel build. The values are the strings stored and shown."""

    CACHED = "cached"  # built and stored in the kernel cache
    CACHE_HIT = "cache-hit"  # found in the cache: nothing was built
    REMOTE_HIT = "remote-hit"  # fetched from another host's build via the master: nothing built
    DIRTY_NOT_CACHED = "dirty-not-cached"  # built from uncommitted changes: never cached
    NON_GIT_NOT_CACHED = "non-git-not-cached"  # built from a tree git cannot vouch for
    CHANGED_DURING_BUILD = "changed-during-build"  # the tree moved under the build: not cached
    STORE_FAILED = "store-failed"  # built, but the cache store failed
    FAILED = "failed"  # no kernel
    # Only the master knows these two; the pipeline never reports them.
    CANCELLED = "cancelled"  # the record step saw the build stopped
    INTERRUPTED = "interrupted"  # the build ended without its record step (worker or master lost)


# What the pipeline reports, in the build result object's "outcome".
PIPELINE_OUTCOMES: tuple[Outcome, ...] = (
    Outcome.CACHED,
    Outcome.CACHE_HIT,
    Outcome.REMOTE_HIT,
    Outcome.DIRTY_NOT_CACHED,
    Outcome.NON_GIT_NOT_CACHED,
    Outcome.CHANGED_DURING_BUILD,
    Outcome.STORE_FAILED,
    Outcome.FAILED,
)
# Every value a records row's kernel_outcome may hold, in the order pages list them.
RECORDED_OUTCOMES: tuple[Outcome, ...] = tuple(Outcome)
# The kernel is in the cache: its files are the cache entry's.
CACHED_OUTCOMES = frozenset({Outcome.CACHED, Outcome.CACHE_HIT, Outcome.REMOTE_HIT})
# Found rather than built: in this host's cache, or another host's entry installed in it.
HIT_OUTCOMES = frozenset({Outcome.CACHE_HIT, Outcome.REMOTE_HIT})
# A kernel was built but kept out of the cache: its files are the source tree's.
NOT_CACHED_OUTCOMES = frozenset({
    Outcome.DIRTY_NOT_CACHED,
    Outcome.NON_GIT_NOT_CACHED,
    Outcome.CHANGED_DURING_BUILD,
    Outcome.STORE_FAILED,
})
# A kernel was built (as opposed to found in the cache, or no kernel at all).
BUILT_OUTCOMES = frozenset({Outcome.CACHED, *NOT_CACHED_OUTCOMES})

# The phases of the result object's "phases" map that the records keep, one column each.
PHASES: tuple[str, ...] = (
    "reserve",
    "source_lock",
    "lookup",
    "configure",
    "make",
    "validate",
    "compile_commands",
    "store",
)


# ---------------------------------------------------------------- error kinds

# Every ``kind`` an error may carry (``KtstrError(kind=...)``, ``errors[].kind`` of a
# worker command's JSON, the holder's answers), with what it means. A test scans the
# code and fails on a kind that is not registered here.
ERROR_KINDS: Mapping[str, str] = {
    # generic
    "error": "an error without a more specific kind",
    "usage": "a command line that cannot be run as given",
    "internal": "a bug in ktstr-ci: the message says what it met",
    "invalid-argument": "an argument of a library call is out of range",
    # build state and results
    "no-state": "the build state file does not exist: the build did not reach lookup",
    "bad-state": "the build state file is not one ktstr-ci wrote",
    "store-failed": "the kernel was built but could not be stored in the cache",
    "reservation-lost": "the build's holder died: the reservation and the source lock are gone",
    # kernel source
    "bad-source": "the --source tree cannot be used",
    "not-kernel-tree": "the directory is not a kernel source tree",
    "bad-git-url": "the --git URL cannot be cloned from",
    "bad-ref": "the git ref is not a valid ref name",
    "git-missing": "git is not installed",
    "git-failed": "a git command failed",
    "git-ref-not-found": "the ref or branch does not exist in the repository",
    "tree-store": "the tree store (per-branch trees, shared git objects) cannot be used",
    "unsupported-arch": "the host architecture is not one ktstr builds for",
    "bad-arch": "an unknown kernel architecture",
    # kernel.org: versions, releases.json, downloads
    "bad-version": "the version, prefix or range is not in the accepted grammar",
    "version-not-found": "no such kernel version (kernel.org or the mirror says so)",
    "releases-fetch": "releases.json could not be fetched",
    "releases-invalid": "releases.json is not a kernel.org-style document",
    "download-failed": "a tarball or checksum download failed",
    "download-html": "the server sent an HTML page instead of a tarball",
    "download-truncated": "the download ended early",
    "download-cache": "the per-host download cache directory cannot be used",
    "checksum-mismatch": "the tarball's sha256 is not the published one",
    "extract-failed": "the tarball could not be extracted",
    # config
    "bad-base-config": "the base config is neither a known target nor a readable file",
    "bad-kconfig": "a kconfig fragment cannot be used",
    "bad-profile": "an unknown or malformed config profile",
    "configure-failed": "make of the config targets failed",
    "validation": "a critical CONFIG_ option is missing from the built kernel's config",
    # make
    "bad-jobs": "make -j is not a positive number",
    "make-failed": "the kernel build failed",
    "make-timeout": "make ran past its time limit",
    "no-image": "make finished without a kernel image",
    "compile-commands": "compile_commands.json could not be generated",
    "vmlinux-strip-failed": "vmlinux could not be stripped",
    # kernel cache
    "cache-root": "the cache root cannot be resolved from the environment",
    "cache-root-unusable": "the cache root cannot be created",
    "cache-unreadable": "the cache directory cannot be listed",
    "cache-store-failed": "a cache store failed; the cache is unchanged",
    "cache-lock-timeout": "a cache entry stayed locked past the store's wait",
    "cache-entry-locked": "a cache entry is in use by test runs",
    "remote-entry-refused": "an entry fetched from the master is missing a file or does not "
    "match the checksums recorded at publish; the build goes on as a miss",
    "clean-failed": "kernel clean could not remove every entry",
    "needs-terminal": "a confirmation needs a terminal; --force skips it",
    "bad-cache-key": "the cache key breaks ktstr's key rules",
    "bad-revision": "a revision to look up is not a full commit id",
    "bad-image-name": "the kernel image name is not a plain file name",
    "bad-metadata": "cache metadata that cannot be written",
    "publish-failed": "the built kernel's files could not be gathered for publishing",
    # ktstr-ci try
    "try-refused": "the try port refused the login, the builder or the job",
    "try-failed": "the try job could not be sent or followed",
    # why a cache entry is corrupt (ktstr's error_kind values of `kernel list --json`)
    "missing": "the entry has no metadata.json",
    "unreadable": "the entry's metadata.json cannot be read",
    "schema_drift": "the entry's metadata.json is valid JSON of the wrong shape",
    "malformed": "the entry's metadata.json is not JSON",
    "truncated": "the entry's metadata.json ends early",
    "parse_error": "the entry's metadata.json cannot be parsed",
    "image_missing": "the entry's kernel image is missing",
    "unknown": "the entry is corrupt for a reason ktstr-ci does not classify",
    # host: topology, CPU caps, LLC plan, locks, sandbox
    "sysfs-unreadable": "the CPU topology cannot be read from sysfs",
    "sysfs-root-invalid": "KTSTR_SYSFS_ROOT does not point at a sysfs tree",
    "invalid-cpu-cap": "the CPU cap is not a usable number of CPUs",
    "invalid-cap": "the holder's CPU cap is not a positive number",
    "invalid-allowed": "KTSTR_CI_ALLOWED_CPUS is not a CPU list",
    "allowed-unknown": "the CPUs this process may run on cannot be read",
    "no-llc-overlap": "no LLC has a CPU this process may run on",
    "resource-contention": "the LLCs or the source tree are busy",
    "resource-contract": "a CPU cap together with KTSTR_BYPASS_LLC_LOCKS",
    "bypass-conflict": "a holder asked for a reservation under KTSTR_BYPASS_LLC_LOCKS",
    "lockfile-remote-fs": "a lock file on a filesystem where flock does not work",
    "lockfile-unusable": "a lock file cannot be opened or created",
    "sandbox-degraded": "the cgroup sandbox cannot confine the build to its CPUs",
    "sandbox-error": "the cgroup sandbox could not be set up or torn down",
    # holder
    "invalid-holder-name": "a holder name outside [A-Za-z0-9_.-]{1,100}",
    "holder-exists": "a live holder of that name exists",
    "holder-missing": "no live holder of that name",
    "holder-error": "the holder refused or failed a request",
    "interrupted": "the holder's request was interrupted by its release",
    # master and worker-host commands
    "records": "the records database cannot be used",
    "settings": "the settings file cannot be used",
}


def error_json(kind: str, message: str) -> dict[str, str]:
    """One ``errors[]`` entry of a worker command's JSON."""
    return {"kind": kind, "message": message}


# ---------------------------------------------------------------- the build result object

_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str, "bool": bool, "int": int, "float": (int, float), "dict": dict, "list": list,
}  # fmt: skip


def fits_annotation(value: object, annotation: str) -> bool:
    """Whether a JSON value fits an annotation such as ``list[int]`` or ``str | None``.

    A JSON ``true`` is not a number here, and a name that is no JSON type
    (an enum, say) is not checked.
    """
    for alt in (a.strip() for a in annotation.split("|")):
        base, _, inner = alt.partition("[")
        inner = inner[:-1] if inner.endswith("]") else inner
        if base == "None":
            if value is None:
                return True
            continue
        if isinstance(value, bool) and base != "bool":
            continue
        typ = _JSON_TYPES.get(base)
        if typ is None:
            return True
        if not isinstance(value, typ):
            continue
        if base == "list" and inner and not all(fits_annotation(v, inner) for v in value):
            continue
        if base == "dict" and inner:
            key_t, _, val_t = inner.partition(",")
            if not all(fits_annotation(k, key_t) and fits_annotation(v, val_t)
                       for k, v in value.items()):
                continue
        return True
    return False


@dataclass
class BuildResult:
    """The build result object: ``kernel build --json`` and ``phase summary --json``.

    ``ok`` is false exactly when ``outcome`` is ``failed``. A field the answer
    did not carry is None (a failed command answers only ``ok`` and ``errors``);
    the pipeline always fills every field.
    """

    ok: bool = False
    outcome: str | None = None
    cache_key: str | None = None
    entry_dir: str | None = None
    image_path: str | None = None
    config_hash: str | None = None
    kconfig_hash: str | None = None
    extra_kconfig_hash: str | None = None
    dirty: bool | None = None
    is_git: bool | None = None
    git_hash: str | None = None
    diff_hash: str | None = None
    source: dict | None = None
    source_dir: str | None = None
    version: str | None = None
    base_config: str | None = None
    profile: str | None = None
    make_jobs: int | None = None
    llcs: list[int] | None = None
    llc_cpus: list[int] | None = None
    make_warnings: int | None = None
    make_errors: int | None = None
    failed_target: str | None = None
    make_log: str | None = None
    overrides: list[dict] | None = None
    dropped: list[dict] | None = None
    # The whole identity (identity.py) and why make ran (None on a cache hit).
    identity: dict | None = None
    explanation: str | None = None
    # Requested vs effective: [{"symbol", "requested", "effective"}] (+ "reason" when dropped).
    config_overrides: list[dict] | None = None
    config_dropped: list[dict] | None = None
    # The final .config's set symbols {"X": "y"}: the master diffs builds with it.
    config_symbols: dict[str, str] | None = None
    # make's warnings as data, deduplicated: [{"file", "line", "message"}].
    build_warnings: list[dict] | None = None
    bzimage_bytes: int | None = None
    vmlinux_bytes: int | None = None
    vmlinux_stripped_bytes: int | None = None
    warnings: list[str] | None = None
    errors: list[dict] = field(default_factory=list)
    phases: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        """The object as the worker command prints it (field order is the contract's)."""
        out = dataclasses.asdict(self)
        if self.outcome is not None:
            out["outcome"] = str(self.outcome)
        return out

    @classmethod
    def from_json(cls, obj: Any) -> BuildResult:
        """Read a worker command's answer; ValueError names a field of the wrong type.

        Keys the contract does not know are ignored, so a newer worker's answer
        still reads; a missing key is None.
        """
        if not isinstance(obj, Mapping):
            raise ValueError(f"a build result must be a JSON object, not {type(obj).__name__}")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in obj:
                continue
            value = obj[f.name]
            if not fits_annotation(value, str(f.type)) or (f.name == "errors" and value is None):
                raise ValueError(f"build result field {f.name!r} must be {f.type}, not {value!r:.60}")
            values[f.name] = value
        return cls(**values)

    def first_error(self) -> str | None:
        """The message of the first ``errors[]`` entry, or None."""
        for err in self.errors:
            msg = err.get("message") if isinstance(err, dict) else str(err)
            if msg:
                return str(msg)
        return None
