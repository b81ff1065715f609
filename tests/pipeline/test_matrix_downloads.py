"""The per-host download cache and ``phase lookup --version`` against a loopback kernel.org.

Real HTTP (tests/support/kernelorg.py), real tarballs of the buildable fake kernel, the
real ``ktstr-ci`` command in subprocesses (concurrent ones for the flock).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from ktstr_steps.errors import KtstrError
from ktstr_steps.kernelorg import download_cache
from tests.support.kernelorg import KernelOrg


def ktstr(*args: str) -> tuple[int, dict, str]:
    p = subprocess.run(
        ["ktstr-ci", *args], capture_output=True, text=True, env=dict(os.environ),
        timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return p.returncode, (json.loads(p.stdout) if p.stdout.strip() else {}), p.stderr


def lookup(state: Path, version: str, profile: str, dl: Path, trees: Path, *extra: str):
    return ktstr("phase", "lookup", "--state", str(state), "--version", version,
                 "--profile", profile, "--download-cache", str(dl), "--tree-store", str(trees),
                 *extra, "--json")  # fmt: skip


def test_fetch_checks_sha256_and_keeps_one_file(kernel_org: KernelOrg, tmp_path: Path) -> None:
    digest = kernel_org.add_tarball("6.12.44")
    got = download_cache.fetch_tarball("6.12.44", tmp_path / "dl")
    assert got.downloaded and got.sha256 == digest
    assert got.path == tmp_path / "dl" / "linux-6.12.44.tar.xz"
    assert [p.name for p in (tmp_path / "dl").iterdir() if not p.name.endswith(".lock")] == [
        "linux-6.12.44.tar.xz"
    ]
    again = download_cache.fetch_tarball("6.12.44", tmp_path / "dl")
    assert not again.downloaded
    assert kernel_org.count(kernel_org.tarball_path("6.12.44")) == 1
    assert kernel_org.count("/pub/linux/kernel/v6.x/sha256sums.asc") == 1


def test_sha256_mismatch_is_an_error_and_nothing_is_kept(
    kernel_org: KernelOrg, tmp_path: Path
) -> None:
    listed = kernel_org.add_tarball("6.6.103")
    # The mirror now serves other bytes under the same name; sha256sums.asc still lists the old.
    from tests.support.kernelorg import make_tarball

    other = make_tarball({"linux-6.6.103/Makefile": "evil:\n", "linux-6.6.103/Kconfig": ""})
    kernel_org.set_route(kernel_org.tarball_path("6.6.103"), other,
                         content_type="application/x-xz")
    with pytest.raises(KtstrError) as err:
        download_cache.fetch_tarball("6.6.103", tmp_path / "dl")
    assert err.value.kind == "checksum-mismatch"
    assert "sha256 mismatch" in str(err.value) and listed in str(err.value)
    assert "nothing was kept" in str(err.value)
    left = [p.name for p in (tmp_path / "dl").iterdir() if not p.name.endswith(".lock")]
    assert left == []


def test_no_published_sum_downloads_unchecked(kernel_org: KernelOrg, tmp_path: Path) -> None:
    from tests.support.kernelorg import make_tarball

    data = make_tarball({"linux-6.1.149/Makefile": "all:\n", "linux-6.1.149/Kconfig": ""})
    kernel_org.set_route(kernel_org.tarball_path("6.1.149"), data, content_type="application/x-xz")
    got = download_cache.fetch_tarball("6.1.149", tmp_path / "dl")  # no sha256sums.asc at all: 404
    assert got.downloaded and got.sha256 is None and got.path.read_bytes() == data


def test_truncated_download_keeps_nothing(kernel_org: KernelOrg, tmp_path: Path) -> None:
    from tests.support.kernelorg import make_tarball

    data = make_tarball({"linux-6.1.149/Makefile": "all:\n"})
    kernel_org.set_route(kernel_org.tarball_path("6.1.149"), data[:-10],
                         declared_length=len(data), content_type="application/x-xz")
    with pytest.raises(KtstrError) as err:
        download_cache.fetch_tarball("6.1.149", tmp_path / "dl")
    assert err.value.kind == "download-truncated"
    assert not any(p for p in (tmp_path / "dl").iterdir() if not p.name.endswith(".lock"))


def test_concurrent_fetches_of_one_version_download_once(
    kernel_org: KernelOrg, tmp_path: Path
) -> None:
    kernel_org.add_fake_kernel("6.15.11")
    results: list[download_cache.Fetched] = []
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            results.append(download_cache.fetch_tarball("6.15.11", tmp_path / "dl"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(r.downloaded for r in results) == [False, False, False, True]
    assert kernel_org.count(kernel_org.tarball_path("6.15.11")) == 1


def test_extract_refuses_a_tarball_without_the_tree_and_drops_it(tmp_path: Path) -> None:
    from tests.support.kernelorg import make_tarball

    bad = tmp_path / "linux-6.1.1.tar.xz"
    bad.write_bytes(make_tarball({"other/Makefile": "all:\n"}))
    with pytest.raises(KtstrError, match="expected directory linux-6.1.1"):
        download_cache.extract_tree(bad, "6.1.1", tmp_path / "tree")
    assert not (tmp_path / "tree").exists()
    corrupt = tmp_path / "linux-6.1.2.tar.xz"
    corrupt.write_bytes(b"\xfd7zXZ\x00 not really xz")
    with pytest.raises(KtstrError, match="corrupt and was removed"):
        download_cache.extract_tree(corrupt, "6.1.2", tmp_path / "tree")
    assert not corrupt.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".tree")] == []


def test_phase_lookup_version_miss_build_then_hit_without_download(
    kernel_org: KernelOrg, tmp_path: Path
) -> None:
    """Two profiles of one version, concurrently: one download, two trees, two builds;
    then a lookup per profile is a hit that touches neither the network nor the trees."""
    kernel_org.add_fake_kernel("6.15.11")
    dl, trees = tmp_path / "dl", tmp_path / "trees"
    procs = {}
    for prof in ("tiny", "tiny-preempt"):
        argv = ["ktstr-ci", "phase", "lookup", "--state", str(tmp_path / f"{prof}.json"),
                "--version", "6.15.11", "--profile", prof, "--download-cache", str(dl),
                "--tree-store", str(trees), "--json"]  # fmt: skip
        procs[prof] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, stdin=subprocess.DEVNULL)
    outs = {}
    for prof, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs[prof] = json.loads(out)
        assert "ktstr-ci: progress: download: " in err or "found in the download cache" in err
    assert kernel_org.count(kernel_org.tarball_path("6.15.11")) == 1
    assert sorted(o["downloaded"] for o in outs.values()) == [False, True]
    keys = {o["cache_key"] for o in outs.values()}
    assert len(keys) == 2 and all(k.startswith("6.15.11-tarball-x86_64-kc") for k in keys)
    for prof, o in outs.items():
        assert o["hit"] is False
        assert o["source_dir"] == str(trees / "tarballs" / o["cache_key"])
        assert (Path(o["source_dir"]) / "Makefile").is_file()
        state = str(tmp_path / f"{prof}.json")
        for phase in ("configure", "make", "validate", "store"):
            rc, obj, err = ktstr("phase", phase, "--state", state, "--json")
            assert rc == 0, (phase, err)
        assert obj["outcome"] == "cached" and obj["cache_key"] == o["cache_key"]
        rc, summary, _ = ktstr("phase", "summary", "--state", state, "--json")
        assert summary["source"] == {"type": "tarball"} and summary["version"] == "6.15.11"
    before = len(kernel_org.requests)
    (dl / "linux-6.15.11.tar.xz").unlink()  # a hit must not even look for the tarball
    for prof in ("tiny", "tiny-preempt"):
        rc, o, err = lookup(tmp_path / f"hit-{prof}.json", "6.15.11", prof, dl, trees)
        assert rc == 0, err
        assert o["hit"] is True and o["outcome"] == "cache-hit" and o["downloaded"] is False
    assert len(kernel_org.requests) == before
    assert not (dl / "linux-6.15.11.tar.xz").exists()


def test_phase_lookup_version_errors(kernel_org: KernelOrg, tmp_path: Path) -> None:
    dl, trees = tmp_path / "dl", tmp_path / "trees"
    rc, o, err = lookup(tmp_path / "s.json", "6.99.1", "tiny", dl, trees)
    assert rc == 1 and o["ok"] is False
    assert o["errors"][0]["kind"] == "version-not-found"
    assert "version 6.99.1 not found (HTTP 404" in err
    rc, o, err = lookup(tmp_path / "s.json", "6.x", "tiny", dl, trees)
    assert rc == 1 and o["errors"][0]["kind"] == "bad-version"
    rc, o, err = ktstr("phase", "lookup", "--state", str(tmp_path / "s.json"), "--version",
                       "6.12.44", "--profile", "tiny", "--json")
    assert rc == 1 and "--download-cache DIR and --tree-store DIR" in o["errors"][0]["message"]
