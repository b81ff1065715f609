"""A release tarball streamed from kernel.org straight into a source tree (``kernel build VERSION``).

The tarball is decompressed and extracted as it arrives, never held in memory
or on disk whole, and its sha256 is computed on the way. Extraction goes to a
hidden staging directory and is renamed into place only after the whole stream
was read and checked, so any failure leaves nothing behind. The matrix's
per-host download cache, which keeps the tarballs, is
:mod:`ktstr_steps.kernelorg.download_cache`.
"""

from __future__ import annotations

import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from ktstr_steps.errors import KtstrError
from ktstr_steps.kernelorg import http
from ktstr_steps.kernelorg.releases import Release, fetch_releases, highest_listed
from ktstr_steps.kernelorg.urls import ENV_MIRROR, ENV_RC_MIRROR, tarball_url
from ktstr_steps.kernelorg.versions import is_rc, parse_exact, series_of
from ktstr_steps.messages import Progress, say


class _Decompressor:
    """Streaming xz/gzip decoder whose ``eof`` says the compressed stream really ended.

    Output per read is bounded by the requested size, so a small, highly
    compressible input cannot expand into a large buffer.
    """

    def __init__(self, raw: http.HashingReader, compression: str) -> None:
        self.raw = raw
        self.xz = compression == "xz"
        self.dec = lzma.LZMADecompressor(lzma.FORMAT_XZ) if self.xz else zlib.decompressobj(31)

    @property
    def eof(self) -> bool:
        return self.dec.eof

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = http.CHUNK
        while not self.dec.eof:
            if self.xz:
                data = self.raw.read(http.CHUNK) if self.dec.needs_input else b""
                if self.dec.needs_input and not data:
                    return b""  # input ended early; the caller checks eof
                out = self.dec.decompress(data, max_length=n)
            else:
                data = self.dec.unconsumed_tail or self.raw.read(http.CHUNK)
                if not data:
                    return b""
                out = self.dec.decompress(data, n)
            if out:
                return out
        return b""


def _member_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's "data" filter, plus: absolute and ``..`` names are refused, not rewritten.

    "data" alone strips a leading ``/`` and extracts the member inside the
    tree; a kernel tarball never contains such names, so one means the file
    is not what it claims to be.
    """
    if member.name.startswith("/"):
        raise tarfile.AbsolutePathError(member)
    if ".." in PurePosixPath(member.name).parts:
        raise tarfile.OutsideDestinationError(member, os.path.join(dest, member.name))
    return tarfile.data_filter(member, dest)


def _not_found(version: str, url: str, releases: list[Release] | None) -> KtstrError:
    if is_rc(version):
        return KtstrError(
            f"RC tarball not found: {url}\nnote: release-candidate tarballs are removed from "
            "git.kernel.org once the stable release ships; build the stable series instead "
            f"(e.g. `{series_of(version)}`)",
            kind="version-not-found",
        )
    series = series_of(version)
    latest = None
    if series:
        try:
            rows = releases if releases is not None else fetch_releases()
            latest = highest_listed(series, rows)
        except KtstrError:
            # The suggestion is a courtesy; the 404 is the error to report.
            latest = None
    if latest and latest != version:
        return KtstrError(
            f"version {version} not found. latest {series}.x: {latest} (HTTP 404 from {url})",
            kind="version-not-found",
        )
    return KtstrError(
        f"version {version} not found (HTTP 404 from {url})", kind="version-not-found"
    )


def download_tarball(
    version: str,
    dest_dir: str | os.PathLike[str],
    *,
    mirror: str | None = None,
    rc_mirror: str | None = None,
    sha256: str | None = None,
    releases: list[Release] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Download, verify (optional ``sha256`` of the compressed file) and extract ``linux-{V}``.

    Returns ``dest_dir/linux-{version}``. Extraction goes to a hidden staging
    directory next to it and is renamed into place only after the whole
    stream was read and checked, so any failure leaves nothing behind.
    ``releases`` is used only for the "latest X.Y.x" hint on a 404.
    """
    parse_exact(version)
    dest_dir = Path(dest_dir)
    target = dest_dir / f"linux-{version}"
    if target.exists():
        raise KtstrError(
            f"{target} already exists; remove it or download into an empty directory",
            kind="download-failed",
        )
    url = tarball_url(version, mirror=mirror, rc_mirror=rc_mirror)
    compression = "gzip" if is_rc(version) else "xz"
    progress = progress or Progress("download")

    try:
        resp = http.open_url(url)
    except http.HttpStatus as e:
        if e.code == 404:
            raise _not_found(version, url, releases) from None
        raise KtstrError(f"download {url}: HTTP {e.code}", kind="download-failed") from None
    except http.Unreachable as e:
        raise KtstrError(
            f"download {url}: {e.reason}; check the network/proxy or "
            f"{ENV_RC_MIRROR if is_rc(version) else ENV_MIRROR} / --mirror",
            kind="download-failed",
        ) from None

    staging: Path | None = None
    try:
        with resp:
            if http.is_html(resp.headers.get("Content-Type")):
                raise KtstrError(
                    f"download {url}: server returned HTML instead of tarball (URL may be invalid)",
                    kind="download-html",
                )
            total = http.content_length(resp)
            http.announce(url, total)
            say(f"extracting tarball ({compression})")
            dest_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".linux-{version}.partial-", dir=dest_dir))
            reader = http.HashingReader(resp, total, progress)
            stream = _Decompressor(reader, compression)
            try:
                # Our own decompressor (not tarfile's "r|xz") so a download cut
                # off between two members is noticed: tarfile alone takes the
                # early EOF for the end of the archive and extracts half a tree.
                with tarfile.open(fileobj=stream, mode="r|") as tf:
                    tf.extractall(staging, filter=_member_filter)
                while stream.read(http.CHUNK):  # tar's zero padding
                    pass
                # Trailing bytes after the compressed stream: read so the hash
                # covers the file exactly as published.
                while reader.read(http.CHUNK):
                    pass
            except (
                tarfile.TarError,
                EOFError,
                OSError,
                ValueError,
                lzma.LZMAError,
                zlib.error,
            ) as e:
                raise KtstrError(
                    f"extract tarball {url}: {e}; the download is corrupt or not a "
                    f"{compression} tarball",
                    kind="extract-failed",
                ) from None
            if not stream.eof or not reader.complete():
                got = f"{reader.done} of {total} bytes" if total else f"{reader.done} bytes"
                raise KtstrError(
                    f"download {url}: truncated ({got}, the {compression} stream did not end); "
                    "the connection was cut — retry the download",
                    kind="download-truncated",
                )
            reader.finish()
            if sha256 is not None and reader.sha256.hexdigest() != sha256.lower():
                raise KtstrError(
                    f"download {url}: sha256 mismatch (expected {sha256.lower()}, got "
                    f"{reader.sha256.hexdigest()}); the mirror served a different file — "
                    "retry, or check the mirror",
                    kind="checksum-mismatch",
                )
            extracted = staging / f"linux-{version}"
            if not extracted.is_dir() or extracted.is_symlink():
                found = sorted(p.name for p in staging.iterdir())[:5]
                raise KtstrError(
                    f"expected directory linux-{version} after extraction of {url} "
                    f"(found: {', '.join(found) or 'nothing'})",
                    kind="extract-failed",
                )
            os.rename(extracted, target)
        return target
    except BaseException:
        progress.done()
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
