"""A per-host download cache of kernel release tarballs, and persistent trees extracted from it.

The nightly matrix builds the same version once per config profile, on any of
the host's LLC-group workers, often at the same moment. So, unlike
``releases.download_tarball`` (stream-extract into a temp dir, nothing kept):

* the tarball is downloaded once per host into ``<cache>/linux-{V}.tar.xz``
  (``.tar.gz`` for -rc), under an flock per file, so concurrent cells of one
  version download it once and the others wait and reuse it;
* it is checked against kernel.org's ``sha256sums.asc`` in the ``v{major}.x``
  directory of the mirror where that file is published (kernel.org publishes
  none for -rc tarballs on git.kernel.org); a mismatch is an error and nothing
  is kept; the file only appears under its final name once complete and checked;
* each cell extracts its own tree to ``<tree store>/tarballs/<cache key>``: a
  persistent directory (the later ``phase`` commands run in it, and a rebuild
  after a cache eviction is incremental), keyed like ktstr keys tarball
  builds, so two profiles of one version never share a ``.config``.

Progress lines are ``ktstr-ci: progress: download: ...`` (messages.Progress).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ktstr_steps import flock, releases
from ktstr_steps.errors import KtstrError
from ktstr_steps.messages import LABEL, Progress, say, warn

_CHUNK = 1 << 16
_USER_AGENT = f"{LABEL} (download cache)"
# A sha256sums line: "<64 hex>  <file name>" (kernel.org's file is clearsigned
# text; the signature lines around the sums never match this).
_SUM_LINE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(\S+)\s*$")


@dataclass(frozen=True)
class Fetched:
    """A tarball in the download cache."""

    path: Path
    downloaded: bool  # False: it was already there (or another cell just fetched it)
    sha256: str | None  # the published sum it was checked against, or None
    seconds: float


def tarball_name(version: str) -> str:
    """``linux-{V}.tar.xz``, or ``.tar.gz`` for an -rc (the forms kernel.org serves)."""
    releases.version_tuple(version)  # validates: no path segments in a file name
    return f"linux-{version}.tar.gz" if releases.is_rc(version) else f"linux-{version}.tar.xz"


def sums_url(version: str, mirror: str | None = None) -> str | None:
    """Where kernel.org publishes the sums of ``version``'s tarball, or None (-rc)."""
    if releases.is_rc(version):
        return None
    major = version.split(".")[0]
    return f"{releases.mirror_url(mirror)}/v{major}.x/sha256sums.asc"


def _open(url: str):
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    return urllib.request.urlopen(req, timeout=releases.TIMEOUT)


def published_sha256(version: str, mirror: str | None = None) -> str | None:
    """The sha256 kernel.org lists for the tarball, or None when none is published.

    A missing sums file (HTTP 404) or a file without a line for this tarball is
    a warning: the download proceeds unchecked. A mirror that cannot be reached
    at all is an error, since the tarball download would fail the same way.
    """
    url = sums_url(version, mirror)
    if url is None:
        say(f"no sha256sums are published for release candidates; {version} is not checked")
        return None
    try:
        with _open(url) as resp:
            data = resp.read()
    except urllib.error.HTTPError as e:
        e.close()
        warn(f"no checksum file at {url} (HTTP {e.code}); the tarball is not checked")
        return None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise KtstrError(
            f"fetch {url}: {getattr(e, 'reason', e)}; check the network/proxy or "
            f"{releases.ENV_MIRROR} / the mirror setting",
            kind="download-failed",
        ) from None
    name = tarball_name(version)
    for line in data.decode("utf-8", errors="replace").splitlines():
        m = _SUM_LINE.match(line.strip())
        if m and m.group(2) == name:
            return m.group(1).lower()
    warn(f"{url} lists no sha256 for {name}; the tarball is not checked")
    return None


def fetch_tarball(
    version: str,
    cache_dir: str | os.PathLike[str],
    *,
    mirror: str | None = None,
    rc_mirror: str | None = None,
    progress: Progress | None = None,
) -> Fetched:
    """The tarball of ``version`` in ``cache_dir``, downloaded (and checked) only if missing."""
    started = time.monotonic()
    name = tarball_name(version)
    cache = Path(cache_dir)
    target = cache / name
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KtstrError(
            f"cannot create the download cache {cache}: {exc.strerror}; make it writable or "
            "change matrix.download_cache in the settings",
            kind="download-cache",
        ) from None
    # One lock file per tarball: different versions download in parallel.
    lock = flock.FileLock.try_acquire(cache / f".{name}.lock", exclusive=True)
    if lock is None:
        say(f"another build is downloading {name}; waiting for it")
        fd = flock.open_lockfile(cache / f".{name}.lock")
        flock.block_flock(fd, exclusive=True)
        lock = flock.FileLock(cache / f".{name}.lock", fd, exclusive=True)
    with lock:
        if target.is_file():
            say(f"tarball {name} found in the download cache {cache}")
            return Fetched(target, False, None, time.monotonic() - started)
        expected = published_sha256(version, mirror)
        url = releases.tarball_url(version, mirror=mirror, rc_mirror=rc_mirror)
        digest = _download(url, version, cache, target, expected, progress or Progress("download"))
        return Fetched(target, True, digest if expected else None, time.monotonic() - started)


def _download(
    url: str, version: str, cache: Path, target: Path, expected: str | None, progress: Progress
) -> str:
    try:
        resp = _open(url)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 404:
            raise KtstrError(
                f"version {version} not found (HTTP 404 from {url}); check the version in "
                "matrix.versions or the mirror",
                kind="version-not-found",
            ) from None
        raise KtstrError(f"download {url}: HTTP {e.code}", kind="download-failed") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise KtstrError(
            f"download {url}: {getattr(e, 'reason', e)}; check the network/proxy or the mirror",
            kind="download-failed",
        ) from None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.partial-", dir=cache)
    tmp = Path(tmp_name)
    sha = hashlib.sha256()
    done = 0
    try:
        with resp, os.fdopen(fd, "wb") as out:
            if "text/html" in (resp.headers.get("Content-Type") or "").lower():
                raise KtstrError(
                    f"download {url}: server returned HTML instead of a tarball (URL may be "
                    "invalid)",
                    kind="download-html",
                )
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            say(f"downloading {url}" + (f" ({total / 1e6:.1f} MB)" if total else ""))
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (OSError, ValueError) as e:  # http.client.IncompleteRead is a ValueError
                    raise KtstrError(
                        f"download {url}: connection lost after {done} bytes ({e}); retry",
                        kind="download-truncated",
                    ) from None
                if not chunk:
                    break
                out.write(chunk)
                sha.update(chunk)
                done += len(chunk)
                progress.update(_describe(done, total))
            if total is not None and done != total:
                raise KtstrError(
                    f"download {url}: truncated ({done} of {total} bytes); retry the download",
                    kind="download-truncated",
                )
            out.flush()
            os.fsync(out.fileno())
        progress.update(_describe(done, total), force=True)
        progress.done()
        digest = sha.hexdigest()
        if expected is not None and digest != expected:
            raise KtstrError(
                f"download {url}: sha256 mismatch (sha256sums.asc lists {expected}, the download "
                f"is {digest}); the mirror served a different file — nothing was kept, retry or "
                "check the mirror",
                kind="checksum-mismatch",
            )
        if expected is not None:
            say(f"sha256 of {target.name} matches sha256sums.asc")
        os.replace(tmp, target)
        return digest
    except BaseException:
        progress.done()
        tmp.unlink(missing_ok=True)
        raise


def _describe(done: int, total: int | None) -> str:
    mb = done / 1e6
    if total:
        return f"{100 * done // total}% ({mb:.1f}/{total / 1e6:.1f} MB)"
    return f"{mb:.1f} MB"


def extract_tree(tarball: Path, version: str, dest: str | os.PathLike[str]) -> Path:
    """Extract ``linux-{V}/`` of ``tarball`` as the directory ``dest`` (atomically).

    The tree goes to a hidden staging directory next to ``dest`` and is renamed
    into place only when complete, so ``dest`` is either absent or a whole tree.
    A tarball that cannot be extracted is removed from the download cache, so the
    next build downloads it again instead of failing the same way forever.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    progress = Progress("extract")
    try:
        say(f"extracting {tarball.name} to {dest}")
        progress.update(f"extracting {tarball.name}", force=True)
        try:
            with tarfile.open(tarball, mode="r:*") as tf:
                # "data" refuses absolute names, "..", links leaving the tree and
                # device nodes: the tarball came from the network.
                tf.extractall(staging, filter="data")
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            tarball.unlink(missing_ok=True)
            raise KtstrError(
                f"extract {tarball}: {exc}; the cached tarball is corrupt and was removed — "
                "the next build downloads it again",
                kind="extract-failed",
            ) from None
        top = staging / f"linux-{version}"
        if not top.is_dir() or top.is_symlink():
            found = sorted(p.name for p in staging.iterdir())[:5]
            raise KtstrError(
                f"expected directory linux-{version} in {tarball} (found: "
                f"{', '.join(found) or 'nothing'})",
                kind="extract-failed",
            )
        try:
            os.rename(top, dest)
        except OSError:
            if not dest.is_dir():
                raise
            # Another build extracted the same tree first: theirs is as good as ours.
        return dest
    finally:
        progress.done()
        shutil.rmtree(staging, ignore_errors=True)


def tarball_tree(tree_store: str | os.PathLike[str], cache_key: str) -> Path:
    """The persistent tree of a tarball build: ``<tree store>/tarballs/<cache key>``."""
    from ktstr_steps import keys

    return Path(tree_store) / "tarballs" / keys.validate_key(cache_key)


def lookup_version(
    state,
    version: str,
    *,
    download_cache: str | os.PathLike[str] | None,
    tree_store: str | os.PathLike[str] | None,
    mirror: str | None = None,
    rc_mirror: str | None = None,
    force: bool = False,
) -> dict:
    """``phase lookup --version V``: key and lookup without I/O; on a miss, fetch and extract.

    ``state`` is a fresh :class:`~ktstr_steps.buildstate.BuildState` from ``init_state``. A hit
    returns before anything is downloaded (ktstr's tarball keys are known from
    the version alone). Returns the lookup phase's JSON fields.
    """
    from ktstr_steps import pipeline, source
    from ktstr_steps.buildstate import timed

    releases.version_tuple(version)
    if not download_cache or not tree_store:
        raise KtstrError(
            "phase lookup --version needs --download-cache DIR and --tree-store DIR",
            kind="usage",
        )
    with timed(state, "lookup"):
        probe = source.AcquiredSource(
            src_dir=Path("."), kind="tarball", version=version, is_git=True
        )
        pipeline.apply_source(state, probe)
        pipeline.compute_key(state, probe)
        entry = None if force else pipeline.lookup_cached(state)
    out = {
        "cache_key": state.cache_key,
        "hit": entry is not None,
        "dirty": False,
        "is_git": True,
        "git_hash": None,
        "version": version,
        "downloaded": False,
        "tarball": None,
        "source_dir": None,
    }
    if entry is not None:
        pipeline.mark_hit(state, entry)
        return {**out, "entry_dir": state.entry_dir, "outcome": state.outcome}
    tree = tarball_tree(tree_store, state.cache_key)
    if tree.is_dir():
        say(f"reusing the extracted tree {tree}")
    else:
        with timed(state, "download"):
            fetched = fetch_tarball(version, download_cache, mirror=mirror, rc_mirror=rc_mirror)
        out.update(downloaded=fetched.downloaded, tarball=str(fetched.path))
        with timed(state, "extract"):
            extract_tree(fetched.path, version, tree)
    src = source.AcquiredSource(
        src_dir=tree, kind="tarball", version=version, canonical_path=tree.resolve(),
        is_temp=False, is_dirty=False, is_git=True,
    )  # fmt: skip
    pipeline.apply_source(state, src)
    pipeline.compute_key(state, src)
    return {**out, "entry_dir": None, "outcome": None, "source_dir": str(tree)}
