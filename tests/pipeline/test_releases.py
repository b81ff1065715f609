"""releases.json, version resolution and tarball downloads against a loopback kernel.org."""

from __future__ import annotations

import io
import os
import re
import socket
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from ktstr_steps.errors import KtstrError
from ktstr_steps.kernelorg import releases, tarballs, urls, versions
from ktstr_steps.messages import Progress
from tests.support.kernelorg import KernelOrg, make_tarball  # kernel_org: registered in conftest.py

# ---------------------------------------------------------------- locations


def test_urls_flag_beats_env_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KTSTR_CI_RC_MIRROR", raising=False)
    assert urls.releases_url() == "https://www.kernel.org/releases.json"
    assert urls.mirror_url() == "https://cdn.kernel.org/pub/linux/kernel"
    assert urls.rc_mirror_url() == "https://git.kernel.org/torvalds/t"
    monkeypatch.setenv("KTSTR_CI_RELEASES_URL", "http://env.example/r.json")
    monkeypatch.setenv("KTSTR_CI_KERNEL_MIRROR", "http://env.example/pub/")
    monkeypatch.setenv("KTSTR_CI_RC_MIRROR", "http://env.example/rc")
    assert urls.releases_url() == "http://env.example/r.json"
    assert urls.mirror_url() == "http://env.example/pub"
    assert urls.releases_url("http://flag.example/x.json") == "http://flag.example/x.json"
    assert urls.mirror_url("http://flag.example/m") == "http://flag.example/m"
    assert urls.tarball_url("6.12.8") == "http://env.example/pub/v6.x/linux-6.12.8.tar.xz"
    assert urls.tarball_url("6.15-rc3") == "http://env.example/rc/linux-6.15-rc3.tar.gz"
    assert urls.tarball_url("5.4", mirror="http://m") == "http://m/v5.x/linux-5.4.tar.xz"


# ---------------------------------------------------------------- releases.json


def test_fetch_parses_rows_and_memoises(kernel_org: KernelOrg) -> None:
    rows = releases.fetch_releases()
    assert [(r.moniker, r.version) for r in rows][:3] == [
        ("mainline", "6.17-rc4"),
        ("stable", "6.16.3"),
        ("stable", "6.15.11"),
    ]
    assert rows[0].released == "2025-01-01"
    assert releases.fetch_releases() is rows
    assert kernel_org.count("/releases.json") == 1


def test_failed_fetch_is_not_memoised(kernel_org: KernelOrg) -> None:
    kernel_org.set_route("/releases.json", b"oops", status=503, content_type="text/plain")
    with pytest.raises(KtstrError, match=r"fetch releases.json .*: HTTP 503") as ei:
        releases.fetch_releases()
    assert ei.value.kind == "releases-fetch"
    kernel_org.set_releases([("stable", "6.15.11")])
    assert [r.version for r in releases.fetch_releases()] == ["6.15.11"]
    assert kernel_org.count("/releases.json") == 2


def test_rows_without_moniker_or_version_are_dropped(
    kernel_org: KernelOrg, capsys: pytest.CaptureFixture[str]
) -> None:
    kernel_org.set_releases(
        [{"version": "6.15.11"}, {"moniker": "stable"}, ("longterm", "6.12.44"), {"x": 1}]
    )
    assert [r.version for r in releases.fetch_releases()] == ["6.12.44"]
    err = capsys.readouterr().err
    assert err.count("ktstr-ci: warning: releases.json from") == 3
    assert "dropping row 0 without moniker/version" in err


def test_releases_json_that_is_not_json(kernel_org: KernelOrg) -> None:
    kernel_org.set_route("/releases.json", b"{not json", content_type="application/json")
    with pytest.raises(KtstrError, match="is not valid JSON") as ei:
        releases.fetch_releases()
    assert "KTSTR_CI_RELEASES_URL" in str(ei.value)
    kernel_org.set_route("/releases.json", b'{"latest": 1}', content_type="application/json")
    with pytest.raises(KtstrError, match='has no "releases" array'):
        releases.fetch_releases()


def test_releases_json_html_page(kernel_org: KernelOrg) -> None:
    kernel_org.set_route("/releases.json", "<html>login</html>", content_type="text/html")
    with pytest.raises(KtstrError, match="server returned HTML instead of releases.json"):
        releases.fetch_releases()


def test_unreachable_releases_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port any more: connection refused, not a hang.
    with pytest.raises(
        KtstrError, match=r"fetch releases.json http://127.0.0.1:\d+/r.json: "
    ) as ei:
        releases.fetch_releases(f"http://127.0.0.1:{port}/r.json")
    assert ei.value.kind == "releases-fetch"


# ---------------------------------------------------------------- resolution


def test_latest_stable(kernel_org: KernelOrg, capsys: pytest.CaptureFixture[str]) -> None:
    # 6.16.3 is the first stable row but ktstr wants patch >= 8.
    assert releases.resolve_version(None) == ["6.15.11"]
    assert releases.resolve_version("latest") == ["6.15.11"]
    err = capsys.readouterr().err
    assert "ktstr-ci: fetching latest kernel version" in err
    assert "ktstr-ci: latest stable kernel: 6.15.11" in err


def test_latest_stable_none_qualifies() -> None:
    rows = [releases.Release("stable", "6.16.3"), releases.Release("mainline", "6.17-rc4")]
    with pytest.raises(KtstrError, match="no stable kernel with patch >= 8 found"):
        releases.latest_stable(rows)
    # A two-part version has patch 0.
    with pytest.raises(KtstrError):
        releases.latest_stable([releases.Release("longterm", "6.12")])


def test_mainline(kernel_org: KernelOrg) -> None:
    assert releases.resolve_version("mainline") == ["6.17-rc4"]
    with pytest.raises(KtstrError, match="no mainline release"):
        releases.mainline([releases.Release("stable", "6.15.11")])


def test_prefix_from_releases(kernel_org: KernelOrg) -> None:
    assert releases.resolve_version("6.12") == ["6.12.44"]
    assert releases.resolve_version("5.15") == ["5.15.190"]
    # "6" → highest 6.x numeric row; mainline's -rc and linux-next drop out.
    assert releases.resolve_version("6") == ["6.16.3"]
    # A series listed only as its .0 release resolves to it.
    rows = [releases.Release("stable", "6.18"), releases.Release("stable", "6.17.2")]
    assert releases.resolve_prefix("6.18", rows) == "6.18"
    # "6.1" must not match 6.12.x / 6.16.x.
    assert releases.resolve_version("6.1") == ["6.1.149"]
    assert all(m == "GET" for m, _ in kernel_org.requests)


def _publish_series(k: KernelOrg, series: str, last: int) -> None:
    major = series.split(".")[0]
    for p in range(1, last + 1):
        k.set_route(
            f"/pub/linux/kernel/v{major}.x/linux-{series}.{p}.tar.xz",
            b"x",
            content_type="application/x-xz",
        )


def test_prefix_eol_series_probes_the_mirror(
    kernel_org: KernelOrg, capsys: pytest.CaptureFixture[str]
) -> None:
    _publish_series(kernel_org, "6.13", 12)
    assert releases.resolve_version("6.13") == ["6.13.12"]
    assert "6.13 not in releases.json (EOL series), probing" in capsys.readouterr().err
    heads = [p for m, p in kernel_org.requests if m == "HEAD"]
    # One window of 16 HEADs, nothing downloaded.
    assert len(heads) == 16
    assert not any(m == "GET" and p.endswith(".tar.xz") for m, p in kernel_org.requests)


def test_prefix_probe_crosses_windows_and_stays_bounded(kernel_org: KernelOrg) -> None:
    _publish_series(kernel_org, "5.16", 20)
    assert releases.resolve_prefix("5.16", releases.fetch_releases()) == "5.16.20"
    heads = [p for m, p in kernel_org.requests if m == "HEAD"]
    assert len(heads) == 16 + 32  # second window doubled, then stopped


def test_prefix_probe_html_counts_as_missing(kernel_org: KernelOrg) -> None:
    _publish_series(kernel_org, "6.13", 3)
    kernel_org.set_route(
        "/pub/linux/kernel/v6.x/linux-6.13.2.tar.xz", "<html>", content_type="text/html"
    )
    assert releases.resolve_version("6.13") == ["6.13.1"]


def test_prefix_probe_nothing_found(kernel_org: KernelOrg) -> None:
    with pytest.raises(KtstrError, match=r"no tarball found for 6\.13\.x on http://127"):
        releases.resolve_version("6.13")


def test_prefix_probe_unreachable_mirror_is_an_error_not_a_miss() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(KtstrError, match=r"probe http://127.0.0.1:\d+/v4.x/linux-4.9.1.tar.xz"):
        releases.resolve_prefix("4.9", [], mirror=f"http://127.0.0.1:{port}")


def test_exact_version_needs_no_network(kernel_org: KernelOrg) -> None:
    assert releases.resolve_version("6.14.2") == ["6.14.2"]
    assert releases.resolve_version("6.15-rc3") == ["6.15-rc3"]
    assert kernel_org.requests == []


@pytest.mark.parametrize(
    "bad",
    [
        "6.14.2; rm -rf /",
        "../6.12",
        "6.12.x",
        "v6.12",
        "6.12.1.2",
        "",
        "6..",
        "latest2",
        "6.12.3\n",
    ],
)
def test_malformed_versions_rejected_before_io(kernel_org: KernelOrg, bad: str) -> None:
    with pytest.raises(KtstrError) as ei:
        releases.resolve_version(bad)
    assert ei.value.kind == "bad-version"
    assert kernel_org.requests == []


def test_range(kernel_org: KernelOrg, capsys: pytest.CaptureFixture[str]) -> None:
    assert releases.resolve_version("6.1..6.13") == ["6.1.149", "6.6.103", "6.12.44"]
    err = capsys.readouterr().err
    assert "ktstr-ci: expanding kernel range 6.1..6.13" in err
    assert "ktstr-ci: range expanded to 3 kernel(s): 6.1.149, 6.6.103, 6.12.44" in err
    # ktstr compares an endpoint without a patch as .0, so 6.12.44 > 6.12.
    assert releases.resolve_version("6.1..6.12") == ["6.1.149", "6.6.103"]
    # Only stable/longterm rows: mainline 6.17-rc4 is not in the range.
    assert releases.resolve_version("6.15..6.17") == ["6.15.11", "6.16.3"]


def test_range_that_expands_to_nothing(kernel_org: KernelOrg) -> None:
    with pytest.raises(KtstrError, match=r"kernel range 6\.13\.\.6\.14 expanded to 0 stable"):
        releases.resolve_version("6.13..6.14")


def test_inverted_range_fails_before_any_request(kernel_org: KernelOrg) -> None:
    with pytest.raises(KtstrError) as ei:
        releases.resolve_version("6.12..6.1")
    assert str(ei.value).startswith(
        "inverted kernel range `6.12..6.1`: start version is greater than end version. "
        "Swap the endpoints"
    )
    assert kernel_org.requests == []
    with pytest.raises(KtstrError, match="inverted"):
        versions.parse_range("6.15..6.15-rc3")


def test_version_order() -> None:
    vs = ["6.15.1", "6.15", "6.15-rc3", "6.15-rc10", "6.9.12", "6.14"]
    assert sorted(vs, key=versions.version_tuple) == [
        "6.9.12", "6.14", "6.15-rc3", "6.15-rc10", "6.15", "6.15.1",
    ]  # fmt: skip


def test_is_prefix() -> None:
    assert versions.is_prefix("6") and versions.is_prefix("6.12")
    for spec in ("6.12.3", "6.15-rc1", "6.1..6.2", "latest", "", "6.x", "6.12\n"):
        assert not versions.is_prefix(spec), spec


def test_active_prefixes_and_series(kernel_org: KernelOrg) -> None:
    active = releases.active_prefixes(releases.fetch_releases())
    assert active == {"6.17", "6.16", "6.15", "6.12", "6.6", "6.1", "5.15"}
    assert versions.series_of("6.17-rc4") == "6.17"
    assert versions.series_of("6.13.2") not in active  # EOL


# ---------------------------------------------------------------- download


def _entries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_download_and_extract(
    kernel_org: KernelOrg, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An incompressible member makes the body span many reads.
    blob = os.urandom(600_000)
    digest = kernel_org.add_tarball(
        "6.12.44", files={"Makefile": "all:\n", "Kconfig": "", "lib/blob.bin": blob}
    )
    dest = tmp_path / "dl"
    got = tarballs.download_tarball(
        "6.12.44", dest, sha256=digest, progress=Progress("download", interval=0)
    )
    assert got == dest / "linux-6.12.44"
    assert (got / "Makefile").read_text() == "all:\n"
    assert (got / "lib/blob.bin").read_bytes() == blob
    assert _entries(dest) == ["linux-6.12.44"]  # no staging debris
    err = capsys.readouterr().err
    url = kernel_org.tarball_url("6.12.44")
    assert re.search(rf"ktstr-ci: downloading {re.escape(url)} \(0\.6 MB\)", err)
    assert "ktstr-ci: extracting tarball (xz)" in err
    pct = [int(m) for m in re.findall(r"ktstr-ci: progress: download: (\d+)% \(", err)]
    assert len(pct) >= 5 and pct == sorted(pct) and pct[-1] == 100
    assert "(0.6/0.6 MB)" in err


def test_download_rc_is_gzip_from_rc_mirror(
    kernel_org: KernelOrg, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kernel_org.add_tarball("6.17-rc4")
    got = tarballs.download_tarball("6.17-rc4", tmp_path)
    assert (got / "Kconfig").is_file()
    assert ("GET", "/torvalds/t/linux-6.17-rc4.tar.gz") in kernel_org.requests
    assert "extracting tarball (gzip)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "version,preset,limit", [("6.12.44", 1, 2_500_000), ("6.17-rc4", None, 1_000_000)]
)
def test_download_streams_without_holding_the_file(
    kernel_org: KernelOrg, tmp_path: Path, version: str, preset: int | None, limit: int
) -> None:
    # The xz decoder allocates its dictionary (1 MiB at preset 1) no matter
    # what; beyond that, memory must not grow with the size of the download.
    size = 5_000_000
    files = {f"linux-{version}/Makefile": "", f"linux-{version}/big": os.urandom(size)}
    data = make_tarball(files, "gz" if "-rc" in version else "xz", preset=preset)
    kernel_org.add_tarball_bytes(version, data)
    tracemalloc.start()
    try:
        tarballs.download_tarball(version, tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / f"linux-{version}/big").stat().st_size == size
    assert peak < limit, f"peak {peak} bytes: the download was buffered"


def test_html_instead_of_tarball(kernel_org: KernelOrg, tmp_path: Path) -> None:
    url = kernel_org.tarball_url("6.12.44")
    kernel_org.set_route(
        kernel_org.tarball_path("6.12.44"), "<html>moved</html>", content_type="text/html"
    )
    with pytest.raises(KtstrError) as ei:
        tarballs.download_tarball("6.12.44", tmp_path)
    assert str(ei.value) == (
        f"download {url}: server returned HTML instead of tarball (URL may be invalid)"
    )
    assert ei.value.kind == "download-html"
    assert _entries(tmp_path) == []


def test_404_suggests_latest_of_series(kernel_org: KernelOrg, tmp_path: Path) -> None:
    with pytest.raises(KtstrError) as ei:
        tarballs.download_tarball("6.12.99", tmp_path)
    assert str(ei.value).startswith("version 6.12.99 not found. latest 6.12.x: 6.12.44")
    assert ei.value.kind == "version-not-found"
    assert _entries(tmp_path) == []


def test_404_without_suggestion(kernel_org: KernelOrg, tmp_path: Path) -> None:
    # Series not in releases.json: nothing to suggest.
    with pytest.raises(KtstrError) as ei:
        tarballs.download_tarball("6.13.99", tmp_path)
    assert str(ei.value).startswith("version 6.13.99 not found (HTTP 404 from http://127.")
    # The listed version itself missing on the mirror: no "latest" pointing at itself.
    with pytest.raises(KtstrError) as ei:
        tarballs.download_tarball("6.12.44", tmp_path)
    assert "latest" not in str(ei.value)


def test_404_rc(kernel_org: KernelOrg, tmp_path: Path) -> None:
    url = kernel_org.tarball_url("6.15-rc3")
    with pytest.raises(KtstrError) as ei:
        tarballs.download_tarball("6.15-rc3", tmp_path)
    msg = str(ei.value)
    assert msg.startswith(f"RC tarball not found: {url}")
    assert "removed" in msg and "once the stable release ships" in msg
    assert kernel_org.count("/releases.json") == 0  # no suggestion lookup for RCs


def test_other_http_status(kernel_org: KernelOrg, tmp_path: Path) -> None:
    kernel_org.set_route(kernel_org.tarball_path("6.12.44"), b"no", status=403)
    with pytest.raises(KtstrError) as ei:
        tarballs.download_tarball("6.12.44", tmp_path)
    assert str(ei.value) == f"download {kernel_org.tarball_url('6.12.44')}: HTTP 403"


def test_checksum_mismatch_leaves_nothing(kernel_org: KernelOrg, tmp_path: Path) -> None:
    good = kernel_org.add_tarball("6.12.44")
    bad = "0" * 64
    with pytest.raises(KtstrError, match=rf"sha256 mismatch \(expected {bad}, got {good}\)") as ei:
        tarballs.download_tarball("6.12.44", tmp_path, sha256=bad)
    assert ei.value.kind == "checksum-mismatch"
    assert _entries(tmp_path) == []
    # The same download with the published checksum succeeds.
    sums = kernel_org.base + "/pub/linux/kernel/v6.x/sha256sums.asc"
    import urllib.request

    listed = urllib.request.urlopen(sums, timeout=5).read().decode()
    assert f"{good}  linux-6.12.44.tar.xz" in listed
    assert tarballs.download_tarball("6.12.44", tmp_path, sha256=good.upper()).is_dir()


def _hostile(extra: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name in ("linux-6.12.44/Makefile", "linux-6.12.44/Kconfig"):
            info = tarfile.TarInfo(name)
            tar.addfile(info, io.BytesIO(b""))
        extra.size = len(data) if extra.isfile() else 0
        tar.addfile(extra, io.BytesIO(data))
    return buf.getvalue()


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("linux-6.12.44/../../escaped"),
        tarfile.TarInfo("/tmp/ktstr-ci-absolute-escape"),
        _symlink("linux-6.12.44/evil", "../../.."),
        _symlink("linux-6.12.44/abs", "/etc/passwd"),
    ],
    ids=["dotdot", "absolute", "symlink-up", "symlink-abs"],
)
def test_hostile_tarball_rejected(
    kernel_org: KernelOrg, tmp_path: Path, member: tarfile.TarInfo
) -> None:
    kernel_org.add_tarball_bytes("6.12.44", _hostile(member, b"pwned"))
    dest = tmp_path / "a" / "b"
    with pytest.raises(KtstrError, match=r"extract tarball .*linux-6\.12\.44\.tar\.xz") as ei:
        tarballs.download_tarball("6.12.44", dest)
    assert ei.value.kind == "extract-failed"
    assert _entries(dest) == []
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "a" / "escaped").exists()
    assert not Path("/tmp/ktstr-ci-absolute-escape").exists()


def test_tarball_without_linux_dir(kernel_org: KernelOrg, tmp_path: Path) -> None:
    kernel_org.add_tarball_bytes("6.12.44", make_tarball({"linux-6.12.4/Makefile": "x"}))
    with pytest.raises(KtstrError) as ei:
        tarballs.download_tarball("6.12.44", tmp_path)
    assert str(ei.value).startswith(
        "expected directory linux-6.12.44 after extraction of http://127."
    )
    assert "found: linux-6.12.4" in str(ei.value)
    assert _entries(tmp_path) == []


def test_corrupt_tarball(kernel_org: KernelOrg, tmp_path: Path) -> None:
    data = make_tarball({f"linux-6.12.44/f{i}": os.urandom(50_000) for i in range(4)})
    kernel_org.add_tarball_bytes("6.12.44", data[: len(data) // 2])  # truncated mid-stream
    with pytest.raises(KtstrError, match=r"extract tarball|truncated") as ei:
        tarballs.download_tarball("6.12.44", tmp_path)
    assert ei.value.kind in ("extract-failed", "download-truncated")
    assert _entries(tmp_path) == []
    kernel_org.add_tarball_bytes("6.12.44", b"this is not xz at all")
    with pytest.raises(KtstrError, match="not a xz tarball"):
        tarballs.download_tarball("6.12.44", tmp_path)
    assert _entries(tmp_path) == []


def test_connection_cut_short_is_detected(kernel_org: KernelOrg, tmp_path: Path) -> None:
    # A complete archive but the server promised more: the tar itself looks
    # fine, only the byte count tells the download was cut.
    data = make_tarball({"linux-6.12.44/Makefile": "", "linux-6.12.44/Kconfig": ""})
    kernel_org.set_route(kernel_org.tarball_path("6.12.44"), data, declared_length=len(data) + 500)
    with pytest.raises(KtstrError) as ei:
        tarballs.download_tarball("6.12.44", tmp_path)
    assert ei.value.kind == "download-truncated"
    assert f"truncated ({len(data)} of {len(data) + 500} bytes" in str(ei.value)
    assert _entries(tmp_path) == []


def test_stream_cut_between_members_is_not_a_short_tree(
    kernel_org: KernelOrg, tmp_path: Path
) -> None:
    # Cut the compressed stream at every 4 KiB step: whatever tarfile makes of
    # the prefix, the result is an error and never a partial linux-V tree.
    files = {f"linux-6.12.44/f{i}": os.urandom(3000) for i in range(12)}
    files["linux-6.12.44/Makefile"] = ""
    files["linux-6.12.44/Kconfig"] = ""
    data = make_tarball(files, "gz")
    for cut in range(4096, len(data) - 1, 4096):
        kernel_org.add_tarball_bytes("6.15-rc1", data[:cut])
        with pytest.raises(KtstrError):
            tarballs.download_tarball("6.15-rc1", tmp_path)
        assert _entries(tmp_path) == [], cut


def test_existing_target_is_not_clobbered(kernel_org: KernelOrg, tmp_path: Path) -> None:
    kernel_org.add_tarball("6.12.44")
    (tmp_path / "linux-6.12.44").mkdir()
    (tmp_path / "linux-6.12.44" / "mine").write_text("keep")
    with pytest.raises(KtstrError, match="already exists"):
        tarballs.download_tarball("6.12.44", tmp_path)
    assert (tmp_path / "linux-6.12.44" / "mine").read_text() == "keep"
    assert kernel_org.requests == []
