"""Kernel source acquisition: local tree, shallow git clone, or release tarball.

Every git call goes through :func:`_git`: argv lists only, user-supplied URLs
and refs after ``--`` or as ``--opt=value`` so they can never be read as
options, no terminal prompts, and a scrubbed environment so an inherited
``GIT_DIR`` cannot make us inspect a different repository than the path given.

One deliberate difference from ktstr: ``--source`` must look like a kernel
tree (top-level ``Makefile`` and ``Kconfig``). ktstr only checks "is a
directory" there and fails later inside ``make defconfig``; the check costs
two stat calls and turns a typo into a clear message (in the wording ktstr
uses for a bad path spec).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ktstr_steps import keys
from ktstr_steps.errors import KtstrError
from ktstr_steps.kernelorg.releases import Release
from ktstr_steps.kernelorg.tarballs import download_tarball
from ktstr_steps.kernelorg.versions import is_range
from ktstr_steps.keys import crc32_hex
from ktstr_steps.messages import Progress, say

SourceKind = Literal["local", "git", "tarball"]

# Variables that redirect git away from the directory we point it at.
_GIT_ENV_SCRUB = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_CEILING_DIRECTORIES",
    "GIT_DISCOVERY_ACROSS_FILESYSTEM",
)

# Conservative on purpose: real kernel refs (v6.14, for-next, sched_ext/for-6.15)
# fit, and nothing a shell or git option parser gives meaning to gets through.
_REF_CHARS = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/+@,=-]*$")
_SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


# ---------------------------------------------------------------- arch


@dataclass(frozen=True)
class ArchInfo:
    arch: str  # the key's arch part: x86_64 | aarch64
    image_name: str  # bzImage | Image (cache entry file name)
    image_rel: str  # where kbuild leaves it inside the tree


_ARCHES = {
    "x86_64": ArchInfo("x86_64", "bzImage", "arch/x86/boot/bzImage"),
    "amd64": ArchInfo("x86_64", "bzImage", "arch/x86/boot/bzImage"),
    "aarch64": ArchInfo("aarch64", "Image", "arch/arm64/boot/Image"),
    "arm64": ArchInfo("aarch64", "Image", "arch/arm64/boot/Image"),
}


def arch_info(machine: str | None = None) -> ArchInfo:
    """Arch, image name and in-tree image path for this host (ktstr builds native only)."""
    m = machine if machine is not None else platform.machine()
    info = _ARCHES.get(m.lower())
    if info is None:
        raise KtstrError(
            f"unsupported host architecture {m!r}: ktstr kernels are built for x86_64 or "
            "aarch64 only; run the build on such a host",
            kind="unsupported-arch",
        )
    return info


# ---------------------------------------------------------------- git


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GIT_ENV_SCRUB}
    env["GIT_OPTIONAL_LOCKS"] = "0"  # never rewrite the index as a side effect
    env["GIT_TERMINAL_PROMPT"] = "0"  # a private URL fails instead of hanging the worker
    env["LC_ALL"] = "C"  # we match a few git messages
    return env


def _git(
    args: list[str], *, cwd: str | os.PathLike[str] | None = None, timeout: float | None = 60.0
) -> subprocess.CompletedProcess[str]:
    argv = [
        "git",
        "-c", "core.fsmonitor=false",
        "-c", "protocol.ext.allow=never",
        *args,
    ]  # fmt: skip
    try:
        return subprocess.run(
            argv, cwd=cwd, env=_git_env(), capture_output=True, text=True,
            errors="replace", timeout=timeout, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        raise KtstrError(
            "git is not installed (needed to inspect and clone kernel trees); "
            "install it, e.g. `apt-get install git`",
            kind="git-missing",
        ) from None
    except subprocess.TimeoutExpired:
        raise KtstrError(
            f"git {args[0]} timed out after {timeout:.0f}s in {cwd or os.getcwd()}",
            kind="git-failed",
        ) from None


# The one git runner of the pipeline (argv list, scrubbed environment), for the
# tree store's mirror and seeding as well.
run_git = _git


def git_ok(args: list[str], cwd: Path, what: str, *, timeout: float = 3600.0) -> None:
    """Run git in ``cwd``; a failure is a ``git-failed`` error naming ``what``, ``cwd`` and git's words."""
    r = run_git(args, cwd=cwd, timeout=timeout)
    if r.returncode != 0:
        raise KtstrError(f"{what} in {cwd} failed: {r.stderr.strip()[-500:] or 'no message'}",
                         kind="git-failed")


def _tail(text: str, n: int = 5) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


@dataclass(frozen=True)
class GitState:
    is_git: bool
    dirty: bool
    hash7: str | None  # first 7 hex of HEAD; None when not a repo
    head: str | None  # full HEAD sha; None when not a repo
    toplevel: Path | None = None


def inspect_git(path: str | os.PathLike[str]) -> GitState:
    """ktstr's dirty/HEAD inspection of a local tree, side-effect free.

    Discovery goes upward, so a plain directory inside another repository is
    judged by that repository. Not a repository → ``is_git=False, dirty=True``.
    Dirty = HEAD vs index or index vs worktree differs for tracked files;
    untracked files and submodules are ignored. An unborn HEAD is an error.

    ``git status`` with ``GIT_OPTIONAL_LOCKS=0`` is used rather than
    ``git diff --quiet``: measured on git 2.39, ``git diff`` rewrites
    ``.git/index`` after a stat-only change even with that variable set,
    while ``status`` honours it. This runs again after the build, while the
    user may be working in the tree, so it must not write anything.
    """
    p = Path(path)
    top = _git(["rev-parse", "--show-toplevel"], cwd=p)
    if top.returncode != 0:
        err = top.stderr
        if "not a git repository" in err:
            return GitState(is_git=False, dirty=True, hash7=None, head=None)
        if "dubious ownership" in err:
            raise KtstrError(
                f"{p}: git refuses to inspect this repository (owned by another user): "
                f"{_tail(err, 2)}\nfix: run the build as the tree's owner, or mark it safe with "
                f"`git config --global --add safe.directory {p}`",
                kind="git-failed",
            )
        raise KtstrError(f"{p}: git rev-parse failed: {_tail(err)}", kind="git-failed")
    toplevel = top.stdout.strip()
    if not toplevel:
        # Inside a .git directory or a bare repository: there is no worktree.
        return GitState(is_git=False, dirty=True, hash7=None, head=None)

    head = _git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], cwd=p)
    sha = head.stdout.strip()
    if head.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", sha):
        raise KtstrError(
            f"{p}: cannot read HEAD of the git repository at {toplevel} (no commits yet?); "
            "commit the tree first, or build a non-git copy",
            kind="git-failed",
        )

    status = _git(
        ["status", "--porcelain=v1", "-z", "--untracked-files=no",
         "--ignore-submodules=all", "--no-renames"],
        cwd=p, timeout=600,
    )  # fmt: skip
    if status.returncode != 0:
        raise KtstrError(f"{p}: git status failed: {_tail(status.stderr)}", kind="git-failed")
    dirty = bool(status.stdout.strip("\0\n"))
    return GitState(is_git=True, dirty=dirty, hash7=sha[:7], head=sha, toplevel=Path(toplevel))


def validate_ref(ref: str) -> str:
    """Reject refs that could be read as options or are not git ref names; return ``ref``."""
    if not isinstance(ref, str) or not _REF_CHARS.fullmatch(ref):
        raise KtstrError(
            f"invalid git ref {ref!r}: use a branch name, tag or full commit sha made of "
            "letters, digits and . _ / + @ , = - (not starting with '-' or '.')",
            kind="bad-ref",
        )
    if _SHA_RE.fullmatch(ref):
        return ref
    chk = _git(["check-ref-format", "--allow-onelevel", ref])
    if chk.returncode != 0:
        raise KtstrError(
            f"invalid git ref {ref!r}: not a valid ref name (see `git check-ref-format`: no "
            "'..', '@{', '//', trailing '/' or '.lock')",
            kind="bad-ref",
        )
    return ref


# ---------------------------------------------------------------- acquired source


@dataclass
class AcquiredSource:
    """What the pipeline needs to know about a tree it is about to build."""

    src_dir: Path
    kind: SourceKind
    version: str | None = None  # tarball only
    ref: str | None = None  # git only
    git_hash: str | None = None  # 7 hex; None for tarballs and dirty/non-git trees
    canonical_path: Path | None = None
    is_temp: bool = False
    is_dirty: bool = False
    is_git: bool = True
    config_crc: str | None = None  # CRC32 of .config at acquire time (local only)
    arch: ArchInfo = field(default_factory=arch_info)

    def source_meta(self) -> dict[str, object]:
        """metadata.json's ``source`` object, tagged on ``type``."""
        if self.kind == "tarball":
            return {"type": "tarball"}
        if self.kind == "git":
            return {"type": "git", "git_hash": self.git_hash, "ref": self.ref}
        return {
            "type": "local",
            "source_tree_path": str(self.canonical_path or self.src_dir),
            "git_hash": self.git_hash,
        }

    @property
    def cacheable(self) -> bool:
        """Dirty or non-git local trees are built but never stored."""
        return not self.is_dirty and self.is_git

    def cache_key(self, kc_suffix: str) -> str:
        """The ktstr cache key for this source and kconfig suffix."""
        arch = self.arch.arch
        if self.kind == "tarball":
            assert self.version is not None
            return keys.tarball_key(self.version, arch, kc_suffix)
        if self.kind == "git":
            assert self.ref is not None and self.git_hash is not None
            return keys.git_key(self.ref, self.git_hash, arch, kc_suffix)
        if self.is_dirty or not self.is_git or self.git_hash is None:
            path = self.canonical_path or self.src_dir
            return keys.local_unknown_key(crc32_hex(os.fsencode(str(path))), arch, kc_suffix)
        return keys.local_key(self.git_hash, arch, kc_suffix, self.config_crc)


def _require_kernel_tree(p: Path, what: str) -> None:
    missing = [n for n in ("Makefile", "Kconfig") if not (p / n).is_file()]
    if missing:
        raise KtstrError(
            f"no kernel source found in {what} (not a kernel source tree — missing "
            f"{' and '.join(missing)}); point at the top of a Linux source tree",
            kind="not-kernel-tree",
        )


def acquire_local(path: str | os.PathLike[str]) -> AcquiredSource:
    """A user's tree (``--source``): canonical path, git state, ``.config`` CRC."""
    p = Path(path)
    if not p.exists():
        raise KtstrError(
            f"{p}: does not exist; pass the kernel source directory", kind="bad-source"
        )
    if not p.is_dir():
        raise KtstrError(
            f"{p}: not a directory; pass the kernel source directory", kind="bad-source"
        )
    canonical = p.resolve(strict=True)
    _require_kernel_tree(canonical, str(canonical))
    state = inspect_git(canonical)
    config = canonical / ".config"
    config_crc = None
    if (config.exists() or config.is_symlink()) and not config.is_file():
        what = "a directory" if config.is_dir() else "not a regular file"
        raise KtstrError(
            f"{config} is {what}, not a kernel config: move it away (the build writes its "
            ".config there)",
            kind="bad-source",
        )
    if config.is_file():
        try:
            config_crc = crc32_hex(config.read_bytes())
        except OSError as e:
            raise KtstrError(f"read {config}: {e.strerror}", kind="bad-source") from None
    return AcquiredSource(
        src_dir=canonical,
        kind="local",
        git_hash=None if state.dirty else state.hash7,
        canonical_path=canonical,
        is_temp=False,
        is_dirty=state.dirty,
        is_git=state.is_git,
        config_crc=config_crc,
    )


def acquire_git(
    url: str, ref: str, tmp_dir: str | os.PathLike[str], *, timeout: float = 3600.0
) -> AcquiredSource:
    """Shallow clone of ``ref`` (branch, tag or full commit sha) into ``tmp_dir/linux``."""
    if not url or url.startswith("-"):
        raise KtstrError(
            f"invalid git URL {url!r}: must not be empty or start with '-'", kind="bad-git-url"
        )
    validate_ref(ref)
    dest = Path(tmp_dir) / "linux"
    if dest.exists():
        raise KtstrError(f"{dest} already exists; clone into an empty directory", kind="git-failed")
    say(f"cloning {url} (ref: {ref}, depth: 1)")
    progress = Progress("clone")
    progress.update(f"cloning {url} {ref}", force=True)
    try:
        if _SHA_RE.fullmatch(ref):
            steps = [
                (["init", "--quiet", "--", str(dest)], None, "prepare clone"),
                (["fetch", "--quiet", "--depth=1", "--", url, ref], dest, "clone fetch"),
                (["checkout", "--quiet", "--detach", "FETCH_HEAD"], dest, "checkout"),
            ]
        else:
            steps = [
                (["clone", "--quiet", "--depth=1", "--single-branch", "--no-tags",
                  f"--branch={ref}", "--", url, str(dest)], None, "clone fetch"),
            ]  # fmt: skip
        for args, cwd, context in steps:
            r = _git(args, cwd=cwd, timeout=timeout)
            if r.returncode != 0:
                raise _clone_error(url, ref, context, r.stderr)
        head = _git(["rev-parse", "--verify", "HEAD^{commit}"], cwd=dest)
        sha = head.stdout.strip()
        if head.returncode != 0 or not sha:
            raise KtstrError(
                f"read HEAD of clone of {url}: {_tail(head.stderr)}", kind="git-failed"
            )
        _require_kernel_tree(dest, f"{url} at {ref}")
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        progress.done()
    return AcquiredSource(
        src_dir=dest,
        kind="git",
        ref=ref,
        git_hash=sha[:7],
        canonical_path=dest.resolve(),
        is_temp=True,
        is_dirty=False,
        is_git=True,
    )


def _clone_error(url: str, ref: str, context: str, stderr: str) -> KtstrError:
    low = stderr.lower()
    if (
        ("remote branch" in low and "not found" in low)
        or "couldn't find remote ref" in low
        or "not our ref" in low
        or "unadvertised object" in low
    ):
        return KtstrError(
            f"{context}: git ref {ref!r} not found in {url}; name an existing branch or tag "
            "(or a full commit sha the server allows fetching)",
            kind="git-ref-not-found",
        )
    return KtstrError(
        f"{context}: git failed for {url} (ref {ref}): {_tail(stderr)}", kind="git-failed"
    )


def acquire_tarball(
    version: str,
    tmp_dir: str | os.PathLike[str],
    *,
    mirror: str | None = None,
    rc_mirror: str | None = None,
    sha256: str | None = None,
    release_rows: list[Release] | None = None,
) -> AcquiredSource:
    """Download and extract an exact release (resolve prefixes/ranges first)."""
    # "6.12" is both a prefix and the exact 6.12.0 release; callers resolve
    # first, so here it means the exact release.
    if is_range(version) or version in ("latest", "mainline"):
        raise KtstrError(
            f"acquire_tarball needs an exact version, got {version!r}; resolve it with "
            "releases.resolve_version first",
            kind="bad-version",
        )
    src = download_tarball(
        version, tmp_dir, mirror=mirror, rc_mirror=rc_mirror, sha256=sha256,
        releases=release_rows,
    )  # fmt: skip
    # ktstr marks tarballs is_git=True: inert, it only selects the dirty hint.
    return AcquiredSource(
        src_dir=src,
        kind="tarball",
        version=version,
        canonical_path=src.resolve(),
        is_temp=True,
        is_dirty=False,
        is_git=True,
    )
