"""kernel.org releases.json, version resolution and tarball downloads (reference §9.1–9.3).

Where things come from (flag value > environment > kernel.org default):

- releases.json: ``KTSTR_CI_RELEASES_URL`` (https://www.kernel.org/releases.json)
- stable tarballs: ``KTSTR_CI_KERNEL_MIRROR`` (https://cdn.kernel.org/pub/linux/kernel),
  fetched as ``{mirror}/v{major}.x/linux-{V}.tar.xz``
- release candidates: ``KTSTR_CI_RC_MIRROR`` (https://git.kernel.org/torvalds/t),
  fetched as ``{rc_mirror}/linux-{V}.tar.gz``

This is synchronous library code run by the ``ktstr-ci`` worker command, so it
uses ``urllib.request`` (which honours HTTP(S)_PROXY / NO_PROXY like ktstr's
client). The 10 s timeout is a socket timeout: it bounds the connect and every
stall between reads, never the whole transfer, so a slow but moving download
of a 150 MB tarball is not cut off (ktstr: connect timeout, no total timeout).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ktstr_steps.errors import KtstrError
from ktstr_steps.messages import LABEL, Progress, say, warn

DEFAULT_RELEASES_URL = "https://www.kernel.org/releases.json"
DEFAULT_MIRROR = "https://cdn.kernel.org/pub/linux/kernel"
DEFAULT_RC_MIRROR = "https://git.kernel.org/torvalds/t"

ENV_RELEASES_URL = "KTSTR_CI_RELEASES_URL"
ENV_MIRROR = "KTSTR_CI_KERNEL_MIRROR"
ENV_RC_MIRROR = "KTSTR_CI_RC_MIRROR"

TIMEOUT = 10.0
_CHUNK = 1 << 16
_USER_AGENT = f"{LABEL} (kernel source acquisition)"

# Exact versions: "6.14", "6.14.2", "6.15-rc3". Anything else never reaches a
# URL, so a version string cannot smuggle path segments into a download.
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(?:-rc(\d+))?$")
_PREFIX_RE = re.compile(r"^\d+(?:\.\d+)?$")
_NUMERIC_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")

# CDN probe for EOL series (§9.2): windows of 16 HEAD requests, doubling, at
# most _PROBE_MAX_WINDOW at once and never past patch _PROBE_MAX_PATCH.
_PROBE_FIRST_WINDOW = 16
_PROBE_MAX_WINDOW = 32
_PROBE_WORKERS = 16
_PROBE_MAX_PATCH = 500


# ---------------------------------------------------------------- locations


def _pick(flag: str | None, env: str, default: str) -> str:
    value = flag or os.environ.get(env) or default
    return value.rstrip("/")


def releases_url(flag: str | None = None) -> str:
    """Where releases.json comes from: ``flag`` > ``$KTSTR_CI_RELEASES_URL`` > kernel.org."""
    return _pick(flag, ENV_RELEASES_URL, DEFAULT_RELEASES_URL)


def mirror_url(flag: str | None = None) -> str:
    """Base of stable tarballs: ``flag`` > ``$KTSTR_CI_KERNEL_MIRROR`` > cdn.kernel.org."""
    return _pick(flag, ENV_MIRROR, DEFAULT_MIRROR)


def rc_mirror_url(flag: str | None = None) -> str:
    """Base of -rc tarballs: ``flag`` > ``$KTSTR_CI_RC_MIRROR`` > git.kernel.org/torvalds/t."""
    return _pick(flag, ENV_RC_MIRROR, DEFAULT_RC_MIRROR)


def is_rc(version: str) -> bool:
    return "-rc" in version


def tarball_url(version: str, *, mirror: str | None = None, rc_mirror: str | None = None) -> str:
    """The URL ktstr would download ``version`` from (xz for stable, gzip for -rc)."""
    m = _parse_exact(version)
    if is_rc(version):
        return f"{rc_mirror_url(rc_mirror)}/linux-{version}.tar.gz"
    return f"{mirror_url(mirror)}/v{m.group(1)}.x/linux-{version}.tar.xz"


# ---------------------------------------------------------------- releases.json


@dataclass(frozen=True)
class Release:
    """One row of releases.json's ``releases`` array (file order = newest first)."""

    moniker: str
    version: str
    iseol: bool = False
    source: str | None = None
    released: str | None = None


_memo: dict[str, list[Release]] = {}


def clear_cache() -> None:
    """Forget memoised releases.json documents (tests, long-lived processes)."""
    _memo.clear()


def _open(url: str, *, method: str = "GET"):
    req = urllib.request.Request(url, method=method, headers={"User-Agent": _USER_AGENT})
    return urllib.request.urlopen(req, timeout=TIMEOUT)


def _is_html(content_type: str | None) -> bool:
    return "text/html" in (content_type or "").lower()


def parse_releases(data: bytes, *, url: str = "releases.json") -> list[Release]:
    """Parse a releases.json document; rows without moniker/version are dropped with a warning."""
    fix = f"point {ENV_RELEASES_URL} (or --releases-url) at a kernel.org-style releases.json"
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KtstrError(
            f"releases.json from {url} is not valid JSON ({e}); {fix}", kind="releases-invalid"
        ) from None
    rows = doc.get("releases") if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        raise KtstrError(
            f'releases.json from {url} has no "releases" array; {fix}', kind="releases-invalid"
        )
    out: list[Release] = []
    for i, row in enumerate(rows):
        moniker = row.get("moniker") if isinstance(row, dict) else None
        version = row.get("version") if isinstance(row, dict) else None
        if (
            not isinstance(moniker, str)
            or not isinstance(version, str)
            or not moniker
            or not version
        ):
            warn(
                f"releases.json from {url}: dropping row {i} without moniker/version: {row!r:.120}"
            )
            continue
        released = row.get("released")
        out.append(
            Release(
                moniker=moniker,
                version=version,
                iseol=bool(row.get("iseol", False)),
                source=row.get("source") if isinstance(row.get("source"), str) else None,
                released=released.get("isodate") if isinstance(released, dict) else None,
            )
        )
    return out


def fetch_releases(url: str | None = None) -> list[Release]:
    """Fetch and parse releases.json, memoised per process and URL on success only.

    A failed fetch is not remembered, so the next caller retries (ktstr §9.1).
    """
    url = releases_url(url)
    if url in _memo:
        return _memo[url]
    try:
        with _open(url) as resp:
            ctype = resp.headers.get("Content-Type")
            data = resp.read()
    except urllib.error.HTTPError as e:
        raise KtstrError(
            f"fetch releases.json {url}: HTTP {e.code}; check {ENV_RELEASES_URL} / --releases-url",
            kind="releases-fetch",
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise KtstrError(
            f"fetch releases.json {url}: {reason}; check the network/proxy or set "
            f"{ENV_RELEASES_URL} / --releases-url to a reachable mirror",
            kind="releases-fetch",
        ) from None
    if _is_html(ctype):
        raise KtstrError(
            f"fetch releases.json {url}: server returned HTML instead of releases.json "
            f"(URL may be invalid); check {ENV_RELEASES_URL} / --releases-url",
            kind="releases-invalid",
        )
    releases = parse_releases(data, url=url)
    _memo[url] = releases
    return releases


# ---------------------------------------------------------------- version forms


def _parse_exact(version: str) -> re.Match[str]:
    m = _VERSION_RE.fullmatch(version or "")
    if not m:
        raise KtstrError(
            f"invalid kernel version {version!r}: expected MAJOR.MINOR[.PATCH] or "
            "MAJOR.MINOR-rcN (e.g. 6.14.2, 6.15-rc3), a prefix (6.12), a range (6.10..6.12), "
            "`latest` or `mainline`",
            kind="bad-version",
        )
    return m


def version_tuple(version: str) -> tuple[int, int, int, float]:
    """Sort key (major, minor, patch or 0, rc or +inf): 6.15-rc3 < 6.15 < 6.15.1."""
    m = _parse_exact(version)
    rc = float(m.group(4)) if m.group(4) is not None else float("inf")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), rc)


def is_prefix(spec: str) -> bool:
    """ktstr's "major.minor prefix" (§1.1 step 5): fewer than two dots, no -rc, numeric."""
    return bool(_PREFIX_RE.fullmatch(spec or ""))


def is_range(spec: str) -> bool:
    return ".." in (spec or "")


def _numeric(version: str) -> tuple[int, int, int] | None:
    m = _NUMERIC_RE.fullmatch(version)
    if not m:
        return None
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def series_of(version: str) -> str | None:
    """major.minor of a version, rc / -next suffixes folded ("6.15-rc3" -> "6.15")."""
    m = re.match(r"^(\d+)\.(\d+)", version or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def active_prefixes(releases: list[Release]) -> set[str]:
    """major.minor series listed in releases.json (linux-next excluded): not EOL for `kernel list`."""
    out: set[str] = set()
    for r in releases:
        if r.moniker == "linux-next":
            continue
        s = series_of(r.version)
        if s:
            out.add(s)
    return out


def latest_stable(releases: list[Release]) -> str:
    """First stable/longterm row whose patch is >= 8 (ktstr skips fresh, bug-prone .0–.7 releases)."""
    for r in releases:
        if r.moniker not in ("stable", "longterm"):
            continue
        n = _numeric(r.version)
        if n and n[2] >= 8:
            return r.version
    raise KtstrError(
        "no stable kernel with patch >= 8 found in releases.json; name a version "
        "explicitly (e.g. `kernel build 6.12.8`)",
        kind="version-not-found",
    )


def mainline(releases: list[Release]) -> str:
    """The newest mainline row (an -rc during the merge window/cycle)."""
    for r in releases:
        if r.moniker == "mainline":
            return r.version
    raise KtstrError(
        "no mainline release in releases.json; name an -rc version explicitly (e.g. 6.15-rc3)",
        kind="version-not-found",
    )


def _highest_listed(prefix: str, releases: list[Release]) -> str | None:
    best: tuple[tuple[int, int, int], str] | None = None
    for r in releases:
        if r.moniker == "linux-next":
            continue
        if r.version != prefix and not r.version.startswith(prefix + "."):
            continue
        n = _numeric(r.version)
        if n and (best is None or n > best[0]):
            best = (n, r.version)
    return best[1] if best else None


def _probe_ok(url: str) -> bool:
    """HEAD ``url``: True on 2xx that is not HTML; False on an HTTP error status.

    Network errors propagate: "could not reach the mirror" must not read as
    "this patch level does not exist".
    """
    try:
        with _open(url, method="HEAD") as resp:
            return 200 <= resp.status < 300 and not _is_html(resp.headers.get("Content-Type"))
    except urllib.error.HTTPError:
        return False


def _probe_cdn(prefix: str, mirror: str | None) -> str:
    base = mirror_url(mirror)
    major = prefix.split(".")[0]
    say(f"{prefix} not in releases.json (EOL series), probing {base}")

    def url(p: int) -> str:
        return f"{base}/v{major}.x/linux-{prefix}.{p}.tar.xz"

    last_ok = 0
    start, window = 1, _PROBE_FIRST_WINDOW
    with concurrent.futures.ThreadPoolExecutor(max_workers=_PROBE_WORKERS) as pool:
        while start <= _PROBE_MAX_PATCH:
            patches = range(start, min(start + window, _PROBE_MAX_PATCH + 1))
            futures = [pool.submit(_probe_ok, url(p)) for p in patches]
            stop = False
            for p, fut in zip(patches, futures, strict=True):
                try:
                    ok = fut.result()
                except (urllib.error.URLError, OSError, ValueError) as e:
                    for f in futures:
                        f.cancel()
                    raise KtstrError(
                        f"probe {url(p)}: {getattr(e, 'reason', e)}; check the network or "
                        f"{ENV_MIRROR} / --mirror",
                        kind="download-failed",
                    ) from None
                if not ok:
                    stop = True
                    break
                last_ok = p
            if stop:
                break
            start += len(patches)
            window = min(window * 2, _PROBE_MAX_WINDOW)
    if last_ok == 0:
        raise KtstrError(
            f"no tarball found for {prefix}.x on {base}; check the version or "
            f"{ENV_MIRROR} / --mirror",
            kind="version-not-found",
        )
    return f"{prefix}.{last_ok}"


def resolve_prefix(prefix: str, releases: list[Release], *, mirror: str | None = None) -> str:
    """Highest 2-/3-part version in ``prefix``'s series; EOL series are probed on the mirror."""
    if not is_prefix(prefix):
        raise KtstrError(
            f"invalid kernel version prefix {prefix!r}: expected MAJOR or MAJOR.MINOR (e.g. 6.12)",
            kind="bad-version",
        )
    found = _highest_listed(prefix, releases)
    if found:
        return found
    return _probe_cdn(prefix, mirror)


def parse_range(spec: str) -> tuple[str, str]:
    """Split and validate ``A..B`` without any I/O (ktstr checks inversion before fetching)."""
    start, sep, end = (spec or "").partition("..")
    if not sep or not start or not end or ".." in end:
        raise KtstrError(
            f"invalid kernel range {spec!r}: expected START..END, e.g. 6.10..6.12",
            kind="bad-version",
        )
    for v in (start, end):
        if not _VERSION_RE.fullmatch(v):
            raise KtstrError(
                f"invalid kernel range {spec!r}: endpoint {v!r} is not MAJOR.MINOR[.PATCH][-rcN]",
                kind="bad-version",
            )
    if version_tuple(start) > version_tuple(end):
        raise KtstrError(
            f"inverted kernel range `{spec}`: start version is greater than end version. "
            f"Swap the endpoints: `{end}..{start}`",
            kind="bad-version",
        )
    return start, end


def expand_range(spec: str, releases: list[Release]) -> list[str]:
    """Stable/longterm versions inside [A, B], ascending (§9.2).

    As in ktstr, an endpoint without a patch level means ``.0``: ``6.1..6.12``
    stops before 6.12.1; write ``6.1..6.13`` to include the 6.12 series.
    """
    start, end = parse_range(spec)
    say(f"expanding kernel range {spec}")
    lo, hi = version_tuple(start), version_tuple(end)
    found: set[str] = set()
    for r in releases:
        if r.moniker not in ("stable", "longterm") or not _VERSION_RE.fullmatch(r.version):
            continue
        if lo <= version_tuple(r.version) <= hi:
            found.add(r.version)
    versions = sorted(found, key=version_tuple)
    if not versions:
        listed = sorted(
            {r.version for r in releases if r.moniker in ("stable", "longterm")}, key=_sort_loose
        )
        raise KtstrError(
            f"kernel range {spec} expanded to 0 stable releases; releases.json lists only the "
            f"newest stable and longterm release of each series ({', '.join(listed) or 'none'}) "
            "— widen the range or build versions one by one",
            kind="version-not-found",
        )
    say(f"range expanded to {len(versions)} kernel(s): {', '.join(versions)}")
    return versions


def _sort_loose(v: str) -> tuple:
    try:
        return version_tuple(v)
    except KtstrError:
        return (float("inf"),)


def resolve_version(
    spec: str | None,
    releases: list[Release] | None = None,
    *,
    releases_url_flag: str | None = None,
    mirror: str | None = None,
) -> list[str]:
    """Turn a VERSION argument into the exact versions to build.

    ``None``/``latest`` → latest stable; ``mainline`` → newest mainline row;
    ``A..B`` → range; ``6``/``6.12`` → highest patch; anything else must be an
    exact version and is used verbatim *without* a network request (old
    versions are not in releases.json; a 404 at download says so).
    """
    if spec is not None and spec not in ("latest", "mainline"):
        if is_range(spec):
            parse_range(spec)  # inverted/malformed ranges fail before any I/O
        elif not is_prefix(spec):
            _parse_exact(spec)
            return [spec]

    def rel() -> list[Release]:
        return releases if releases is not None else fetch_releases(releases_url_flag)

    if spec is None or spec == "latest":
        say("fetching latest kernel version")
        v = latest_stable(rel())
        say(f"latest stable kernel: {v}")
        return [v]
    if spec == "mainline":
        return [mainline(rel())]
    if is_range(spec):
        return expand_range(spec, rel())
    return [resolve_prefix(spec, rel(), mirror=mirror)]


# ---------------------------------------------------------------- download


class _HashingReader:
    """File-like view of the HTTP body that hashes, counts and reports progress.

    tarfile's stream mode reads from this, so the tarball is decompressed and
    extracted as it arrives and never held in memory or on disk whole.
    """

    def __init__(self, raw, total: int | None, progress: Progress) -> None:
        self.raw = raw
        self.total = total
        self.progress = progress
        self.sha256 = hashlib.sha256()
        self.done = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n if n is not None and n >= 0 else _CHUNK)
        if data:
            self.sha256.update(data)
            self.done += len(data)
            if self.total is None or self.done < self.total:  # 100% is forced at the end
                self.progress.update(self.describe())
        return data

    def describe(self) -> str:
        mb = self.done / 1e6
        if self.total:
            return f"{100 * self.done // self.total}% ({mb:.1f}/{self.total / 1e6:.1f} MB)"
        return f"{mb:.1f} MB"


class _Decompressor:
    """Streaming xz/gzip decoder whose ``eof`` says the compressed stream really ended.

    Output per read is bounded by the requested size, so a small, highly
    compressible input cannot expand into a large buffer.
    """

    def __init__(self, raw: _HashingReader, compression: str) -> None:
        self.raw = raw
        self.xz = compression == "xz"
        self.dec = lzma.LZMADecompressor(lzma.FORMAT_XZ) if self.xz else zlib.decompressobj(31)

    @property
    def eof(self) -> bool:
        return self.dec.eof

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = _CHUNK
        while not self.dec.eof:
            if self.xz:
                data = self.raw.read(_CHUNK) if self.dec.needs_input else b""
                if self.dec.needs_input and not data:
                    return b""  # input ended early; the caller checks eof
                out = self.dec.decompress(data, max_length=n)
            else:
                data = self.dec.unconsumed_tail or self.raw.read(_CHUNK)
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
            latest = _highest_listed(series, rows)
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
    _parse_exact(version)
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
        resp = _open(url)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 404:
            raise _not_found(version, url, releases) from None
        raise KtstrError(f"download {url}: HTTP {e.code}", kind="download-failed") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise KtstrError(
            f"download {url}: {getattr(e, 'reason', e)}; check the network/proxy or "
            f"{ENV_RC_MIRROR if is_rc(version) else ENV_MIRROR} / --mirror",
            kind="download-failed",
        ) from None

    staging: Path | None = None
    try:
        with resp:
            if _is_html(resp.headers.get("Content-Type")):
                raise KtstrError(
                    f"download {url}: server returned HTML instead of tarball (URL may be invalid)",
                    kind="download-html",
                )
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            say(f"downloading {url} ({total / 1e6:.1f} MB)" if total else f"downloading {url}")
            say(f"extracting tarball ({compression})")
            dest_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".linux-{version}.partial-", dir=dest_dir))
            reader = _HashingReader(resp, total, progress)
            stream = _Decompressor(reader, compression)
            try:
                # Our own decompressor (not tarfile's "r|xz") so a download cut
                # off between two members is noticed: tarfile alone takes the
                # early EOF for the end of the archive and extracts half a tree.
                with tarfile.open(fileobj=stream, mode="r|") as tf:
                    tf.extractall(staging, filter=_member_filter)
                while stream.read(_CHUNK):  # tar's zero padding
                    pass
                # Trailing bytes after the compressed stream: read so the hash
                # covers the file exactly as published.
                while reader.read(_CHUNK):
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
            if not stream.eof or (total is not None and reader.done != total):
                got = f"{reader.done} of {total} bytes" if total else f"{reader.done} bytes"
                raise KtstrError(
                    f"download {url}: truncated ({got}, the {compression} stream did not end); "
                    "the connection was cut — retry the download",
                    kind="download-truncated",
                )
            progress.update(reader.describe(), force=True)
            progress.done()
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
