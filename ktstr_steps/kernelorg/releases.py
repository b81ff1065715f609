"""kernel.org's releases.json: fetch, parse, and what it says about versions.

releases.json lists the newest row of each active series (mainline, stable,
longterm, linux-next), newest first. From it come ``latest``, ``mainline``,
the highest patch of a prefix and the stable releases of a range; a prefix
whose series is not listed (end of life) is found by probing the mirror.
The fetch is memoised per process and URL on success only, so a failure is
retried by the next caller.
"""

from __future__ import annotations

import concurrent.futures
import json
from dataclasses import dataclass

from ktstr_steps.errors import KtstrError
from ktstr_steps.kernelorg import http
from ktstr_steps.kernelorg.urls import (
    ENV_MIRROR,
    ENV_RELEASES_URL,
    mirror_url,
    releases_url,
    tarball_url,
)
from ktstr_steps.kernelorg.versions import (
    VERSION_RE,
    is_prefix,
    is_range,
    numeric,
    parse_exact,
    parse_range,
    series_of,
    sort_loose,
    version_tuple,
)
from ktstr_steps.messages import say, warn

# What a user of ``ktstr-ci kernel`` sets to point at another releases.json.
CLI_SETTING = f"{ENV_RELEASES_URL} / --releases-url"

# Mirror probe for EOL series: windows of 16 HEAD requests, doubling, at most
# _PROBE_MAX_WINDOW at once and never past patch _PROBE_MAX_PATCH.
_PROBE_FIRST_WINDOW = 16
_PROBE_MAX_WINDOW = 32
_PROBE_WORKERS = 16
_PROBE_MAX_PATCH = 500


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


def releases_from_answer(
    url: str, status: int, content_type: str | None, body: bytes, *, setting: str = CLI_SETTING
) -> list[Release]:
    """The rows of an HTTP answer for releases.json, whichever client fetched it.

    ``setting`` names what the user changes to point elsewhere (the command's
    flag and variable, or the matrix's ``matrix.releases_url``).
    """
    if not 200 <= status < 300:
        raise KtstrError(
            f"fetch releases.json {url}: HTTP {status}; check {setting}", kind="releases-fetch"
        )
    if http.is_html(content_type):
        raise KtstrError(
            f"fetch releases.json {url}: server returned HTML instead of releases.json "
            f"(URL may be invalid); check {setting}",
            kind="releases-invalid",
        )
    return parse_releases(body, url=url)


def unreachable(url: str, reason: object, *, setting: str = CLI_SETTING) -> KtstrError:
    """The error for a releases.json that did not answer at all."""
    return KtstrError(
        f"fetch releases.json {url}: {reason}; check the network/proxy or set "
        f"{setting} to a reachable mirror",
        kind="releases-fetch",
    )


def fetch_releases(url: str | None = None) -> list[Release]:
    """Fetch and parse releases.json, memoised per process and URL on success only."""
    url = releases_url(url)
    if url in _memo:
        return _memo[url]
    try:
        ctype, data = http.get(url)
        status = 200
    except http.HttpStatus as e:
        ctype, data, status = None, b"", e.code
    except http.Unreachable as e:
        raise unreachable(url, e.reason) from None
    releases = releases_from_answer(url, status, ctype, data)
    _memo[url] = releases
    return releases


# ---------------------------------------------------------------- resolution


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
        n = numeric(r.version)
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


def highest_listed(prefix: str, releases: list[Release]) -> str | None:
    best: tuple[tuple[int, int, int], str] | None = None
    for r in releases:
        if r.moniker == "linux-next":
            continue
        if r.version != prefix and not r.version.startswith(prefix + "."):
            continue
        n = numeric(r.version)
        if n and (best is None or n > best[0]):
            best = (n, r.version)
    return best[1] if best else None


def _probe_ok(url: str) -> bool:
    """HEAD ``url``: True on 2xx that is not HTML; False on an HTTP error status.

    Network errors propagate: "could not reach the mirror" must not read as
    "this patch level does not exist".
    """
    try:
        with http.open_url(url, method="HEAD") as resp:
            return 200 <= resp.status < 300 and not http.is_html(resp.headers.get("Content-Type"))
    except http.HttpStatus:
        return False


def _probe_cdn(prefix: str, mirror: str | None) -> str:
    base = mirror_url(mirror)
    say(f"{prefix} not in releases.json (EOL series), probing {base}")

    def url(p: int) -> str:
        return tarball_url(f"{prefix}.{p}", mirror=mirror)

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
                except http.Unreachable as e:
                    for f in futures:
                        f.cancel()
                    raise KtstrError(
                        f"probe {url(p)}: {e.reason}; check the network or "
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
    found = highest_listed(prefix, releases)
    if found:
        return found
    return _probe_cdn(prefix, mirror)


def expand_range(spec: str, releases: list[Release]) -> list[str]:
    """Stable/longterm versions inside [A, B], ascending.

    As in ktstr, an endpoint without a patch level means ``.0``: ``6.1..6.12``
    stops before 6.12.1; write ``6.1..6.13`` to include the 6.12 series.
    """
    start, end = parse_range(spec)
    say(f"expanding kernel range {spec}")
    lo, hi = version_tuple(start), version_tuple(end)
    found: set[str] = set()
    for r in releases:
        if r.moniker not in ("stable", "longterm") or not VERSION_RE.fullmatch(r.version):
            continue
        if lo <= version_tuple(r.version) <= hi:
            found.add(r.version)
    versions = sorted(found, key=version_tuple)
    if not versions:
        listed = sorted(
            {r.version for r in releases if r.moniker in ("stable", "longterm")}, key=sort_loose
        )
        raise KtstrError(
            f"kernel range {spec} expanded to 0 stable releases; releases.json lists only the "
            f"newest stable and longterm release of each series ({', '.join(listed) or 'none'}) "
            "— widen the range or build versions one by one",
            kind="version-not-found",
        )
    say(f"range expanded to {len(versions)} kernel(s): {', '.join(versions)}")
    return versions


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
            parse_exact(spec)
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


