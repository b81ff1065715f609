"""A per-host download cache of kernel release tarballs, and persistent trees extracted from it.

The nightly matrix builds the same version once per config profile, on any of
the host's LLC-group workers, often at the same moment. So, unlike
``tarballs.download_tarball`` (stream-extract into a temp dir, nothing kept):

* the tarball is downloaded once per host into ``<cache>/linux-{V}.tar.xz``
  (``.tar.gz`` for -rc), under an flock per file, so concurrent cells of one
  version download it once and the others wait and reuse it;
* it is checked against kernel.org's ``sha256sums.asc`` in the ``v{major}.x``
  directory of the mirror where that file is published (kernel.org publishes
  none for -rc tarballs on git.kernel.org); a mismatch is an error and nothing
  is kept; the file only appears under its final name once complete and checked;
* each cell extracts its own tree from it (:func:`extract_tree`, atomically);
  where that tree lives is :mod:`ktstr_steps.release_tree`'s business.

Progress lines are ``ktstr-ci: progress: download: ...`` (messages.Progress).
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ktstr_steps import flock
from ktstr_steps.errors import KtstrError
from ktstr_steps.kernelorg import http
from ktstr_steps.kernelorg.urls import ENV_MIRROR, sums_url, tarball_name, tarball_url
from ktstr_steps.messages import Progress, say, warn

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
        _, data = http.get(url)
    except http.HttpStatus as e:
        warn(f"no checksum file at {url} (HTTP {e.code}); the tarball is not checked")
        return None
    except http.Unreachable as e:
        raise KtstrError(
            f"fetch {url}: {e.reason}; check the network/proxy or "
            f"{ENV_MIRROR} / the mirror setting",
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
            # Used now: the least recently used tarball is the first to go.
            os.utime(target)
            return Fetched(target, False, None, time.monotonic() - started)
        expected = published_sha256(version, mirror)
        url = tarball_url(version, mirror=mirror, rc_mirror=rc_mirror)
        digest = _download(url, version, cache, target, expected, progress or Progress("download"))
        return Fetched(target, True, digest if expected else None, time.monotonic() - started)


def _download(
    url: str, version: str, cache: Path, target: Path, expected: str | None, progress: Progress
) -> str:
    try:
        resp = http.open_url(url)
    except http.HttpStatus as e:
        if e.code == 404:
            raise KtstrError(
                f"version {version} not found (HTTP 404 from {url}); check the version in "
                "matrix.versions or the mirror",
                kind="version-not-found",
            ) from None
        raise KtstrError(f"download {url}: HTTP {e.code}", kind="download-failed") from None
    except http.Unreachable as e:
        raise KtstrError(
            f"download {url}: {e.reason}; check the network/proxy or the mirror",
            kind="download-failed",
        ) from None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.partial-", dir=cache)
    tmp = Path(tmp_name)
    try:
        with resp, os.fdopen(fd, "wb") as out:
            if http.is_html(resp.headers.get("Content-Type")):
                raise KtstrError(
                    f"download {url}: server returned HTML instead of a tarball (URL may be "
                    "invalid)",
                    kind="download-html",
                )
            total = http.content_length(resp)
            http.announce(url, total)
            reader = http.HashingReader(resp, total, progress)
            while True:
                try:
                    chunk = reader.read(http.CHUNK)
                except (OSError, ValueError) as e:  # http.client.IncompleteRead is a ValueError
                    raise KtstrError(
                        f"download {url}: connection lost after {reader.done} bytes ({e}); retry",
                        kind="download-truncated",
                    ) from None
                if not chunk:
                    break
                out.write(chunk)
            if not reader.complete():
                raise KtstrError(
                    f"download {url}: truncated ({reader.done} of {total} bytes); retry the "
                    "download",
                    kind="download-truncated",
                )
            out.flush()
            os.fsync(out.fileno())
        reader.finish()
        digest = reader.sha256.hexdigest()
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
