"""The host's shared git object store: one bare mirror per repository under the tree store.

Every per-branch tree borrows its objects from the mirror of its repository
(``.git/objects/info/alternates``), so a new tree neither copies nor fetches
the history again: the mirror is fetched into once per build, before the
checkout, and the checkout then finds the revision already present.

``<tree store>/.git-objects/<name>-<crc32 of the URL>.git``. The mirror never
prunes: ``gc.auto=0`` and ``gc.pruneExpire=never``, because a tree's commit
may be reachable from no mirror ref after a force-push, and pruning it would
break that tree. Fetches into one mirror are serialised by an flock next to it.

A repository on this host (``repourl`` an absolute path, as the master's own
hosted repository is for its local workers) gives its first mirror by ``git
clone --bare --local``: the object files are hard-linked, not repacked and
sent, which on the 6.12 tree is 9.4 s of a first build's checkout against
0.01 s. Git never rewrites an object or pack file in place, so the link stays
what it was when the source repacks or prunes; later fetches are ordinary.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ktstr_steps import flock
from ktstr_steps.errors import KtstrError
from ktstr_steps.keys import crc32_hex
from ktstr_steps.messages import say
from ktstr_steps.source import run_git, validate_ref

OBJECTS_DIR = ".git-objects"
FETCH_WAIT = 3600.0
_SHA = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def mirror_path(store: Path, repourl: str) -> Path:
    """``<store>/.git-objects/<last URL part>-<crc32 of the URL>.git``."""
    base = repourl.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git") or "repo"
    name = _UNSAFE.sub("_", base)[:40]
    return Path(store) / OBJECTS_DIR / f"{name}-{crc32_hex(repourl.encode())}.git"


def _check(r, what: str) -> str:
    if r.returncode != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-3:])
        raise KtstrError(f"{what} failed: {tail}", kind="git-failed")
    return r.stdout


def has_commit(repo: Path, sha: str) -> bool:
    """Whether ``sha`` names a commit present in ``repo`` (its alternates included)."""
    r = run_git(["cat-file", "-e", f"{sha}^{{commit}}"], cwd=repo)
    return r.returncode == 0


def rev_parse(repo: Path, rev: str) -> str | None:
    r = run_git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=repo)
    sha = r.stdout.strip()
    return sha if r.returncode == 0 and _SHA.fullmatch(sha) else None


_MIRROR_CONFIG = (("gc.auto", "0"), ("gc.pruneExpire", "never"),
                  ("core.logAllRefUpdates", "false"))


def _configure(path: Path) -> None:
    for key, value in _MIRROR_CONFIG:
        _check(run_git(["config", key, value], cwd=path), f"git config {key} in {path}")


def _init(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _check(run_git(["init", "--quiet", "--bare", "--", str(path)]), f"git init --bare {path}")
    _configure(path)


def local_repository(repourl: str) -> Path | None:
    """The directory of a repository on this host that ``repourl`` names as a path, or None.

    Only a plain absolute path: git never takes its local shortcut for a
    ``file://`` URL, and anything else is another host.
    """
    if "://" in repourl or not repourl.startswith("/"):
        return None
    path = Path(repourl)
    return path if (path / "objects").is_dir() or (path / ".git" / "objects").is_dir() else None


def _clone_local(path: Path, source: Path) -> bool:
    """Create the mirror at ``path`` as a hard-linked clone of ``source``; False = not done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.clone-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a process killed mid-clone
    if path.exists():
        shutil.rmtree(path)  # no HEAD: an init that died half-way; nothing uses it
    tmp = path.with_name(f".{path.name}.clone-{os.getpid()}")
    try:
        r = run_git(["clone", "--quiet", "--bare", "--local", "--no-tags", "--", str(source),
                     str(tmp)], timeout=FETCH_WAIT)
        if r.returncode != 0:
            say(f"could not clone {source} locally ({r.stderr.strip()[-300:] or 'no message'}); "
                "fetching into a new mirror instead")
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        _configure(tmp)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"new git mirror {path}: objects hard-linked from {source}")
    return True


class MirrorLock:
    """The exclusive flock that serialises fetches into one mirror."""

    def __init__(self, mirror: Path, wait: float = FETCH_WAIT) -> None:
        self.path = mirror.with_name(mirror.name + ".lock")
        self.wait = wait
        self.fd: int | None = None

    def __enter__(self) -> MirrorLock:
        fd = flock.open_lockfile(self.path)
        if not flock.flock_poll(fd, exclusive=True, timeout=self.wait, poll=0.2):
            os.close(fd)
            raise KtstrError(
                f"the git mirror {self.path.with_suffix('')} stayed locked for {self.wait:g}s "
                f"(lockfile {self.path}); run `ktstr-ci locks` to see who holds it",
                kind="resource-contention",
            )
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = None


def update_mirror(store: Path, repourl: str, branch: str | None,
                  revision: str | None) -> tuple[Path, str]:
    """Fetch ``branch`` (and ``revision``) of ``repourl`` into its mirror; ``(mirror, commit)``.

    ``commit`` is ``revision`` when given (it must then be in the mirror after
    the fetch), else the fetched branch head. Nothing is fetched when the
    revision is already there: a rebuild costs one ``cat-file``.
    """
    if not repourl or repourl.startswith("-"):
        raise KtstrError(f"invalid repository URL {repourl!r}", kind="bad-git-url")
    if branch:
        validate_ref(branch)
    if revision and not _SHA.fullmatch(revision):
        raise KtstrError(
            f"invalid revision {revision!r}: a full commit sha (40 or 64 hex) is needed",
            kind="bad-ref",
        )
    mirror = mirror_path(store, repourl)
    with MirrorLock(mirror):
        if not (mirror / "HEAD").is_file():
            source = local_repository(repourl)
            if source is None or not _clone_local(mirror, source):
                _init(mirror)
        if revision and has_commit(mirror, revision):
            return mirror, revision
        ref = f"refs/heads/{branch}" if branch else "HEAD"
        dest = f"refs/heads/{branch}" if branch else "refs/ktstr-ci/HEAD"
        r = run_git(["fetch", "--quiet", "--no-tags", "--force", "--", repourl,
                     f"+{ref}:{dest}"], cwd=mirror, timeout=FETCH_WAIT)  # fmt: skip
        if r.returncode != 0 and not revision:
            _check(r, f"git fetch {repourl} {ref} into the mirror {mirror}")
        if revision:
            said = ""
            if not has_commit(mirror, revision):
                # A revision no branch head reaches any more (force-pushed away).
                r = run_git(["fetch", "--quiet", "--no-tags", "--", repourl, revision],
                            cwd=mirror, timeout=FETCH_WAIT)
                said = r.stderr.strip().splitlines()[-1] if r.returncode and r.stderr.strip() else ""
            if not has_commit(mirror, revision):
                raise KtstrError(
                    f"revision {revision} is not in {repourl} (not on branch {branch or 'HEAD'}, "
                    f"and not served by sha{': ' + said if said else ''}); push it, or build "
                    "a revision the branch has", kind="git-ref-not-found")
            return mirror, revision
        head = rev_parse(mirror, dest)
        if head is None:
            raise KtstrError(f"{repourl} has no {ref}", kind="git-ref-not-found")
        return mirror, head


def adopt_commit(mirror: Path, tree: Path, sha: str) -> bool:
    """Make ``sha`` (the HEAD of ``tree``) present in the mirror; False when it cannot be.

    A tree made before the mirror existed has objects of its own; fetching its
    HEAD copies only what the mirror lacks.
    """
    if has_commit(mirror, sha):
        return True
    with MirrorLock(mirror):
        run_git(["fetch", "--quiet", "--no-tags", "--", str(tree), "HEAD"], cwd=mirror,
                timeout=FETCH_WAIT)
    return has_commit(mirror, sha)


def borrow_objects(tree_git: Path, mirror: Path) -> bool:
    """Point ``tree_git`` (a ``.git`` directory) at the mirror's objects; True when added."""
    info = tree_git / "objects" / "info"
    alternates = info / "alternates"
    line = str((mirror / "objects").resolve())
    existing = alternates.read_text().split("\n") if alternates.is_file() else []
    if line in existing:
        return False
    info.mkdir(parents=True, exist_ok=True)
    alternates.write_text("".join(f"{x}\n" for x in [*filter(None, existing), line]))
    return True
