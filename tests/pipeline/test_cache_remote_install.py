"""Installing an entry fetched from the master: verified, atomic, refused when tampered."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ktstr_steps import cache
from ktstr_steps.buildstate import BuildState
from ktstr_steps.cache import KernelMetadata, KernelSource, remote

KEY = "local-1a2b3c4-x86_64-kcc0bd848c"


def meta() -> KernelMetadata:
    return KernelMetadata(source=KernelSource.tarball(), arch="x86_64", image_name="bzImage",
                          built_at="2026-04-12T10:00:00Z", version="6.12.3",
                          config_hash="0badc0de", ktstr_kconfig_hash="c0bd848c",
                          has_vmlinux=True, vmlinux_stripped=True)


def published(staging: Path) -> dict[str, dict]:
    """A staging dir holding a complete entry and its files.json-style record."""
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "bzImage").write_bytes(b"MZ remote bzImage " * 4096)
    (staging / "vmlinux").write_bytes(b"\x7fELF stripped " * 2048)
    (staging / "metadata.json").write_text(meta().dumps())
    (staging / ".config").write_text("CONFIG_SCHED_CLASS_EXT=y\n")
    return {p.name: {"size": p.stat().st_size,
                     "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in staging.iterdir()}


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_install_verifies_and_stores_the_entry(isolated_env: Path, tmp_path: Path) -> None:
    files = published(tmp_path / "staging")
    want = remote.expected_files(files)
    assert set(want) == {"bzImage", "vmlinux", "metadata.json"}  # .config is no entry file
    entry = remote.install(KEY, tmp_path / "staging", want, origin="http://m/b/1/")
    assert entry.path == isolated_env / KEY
    assert (entry.path / "bzImage").read_bytes() == (tmp_path / "staging/bzImage").read_bytes()
    found = cache.lookup(KEY)
    assert found is not None and found.metadata.config_hash == "0badc0de"
    prov = json.loads((entry.path / "ktstr-ci.json").read_text())
    assert prov == {"installed_from": "master", "origin": "http://m/b/1/"}
    assert not any(n.startswith(".tmp-") for n in listing(isolated_env))


def test_tampered_file_is_refused_naming_file_and_checksums(isolated_env: Path,
                                                          tmp_path: Path) -> None:
    files = published(tmp_path / "staging")
    want = remote.expected_files(files)
    image = tmp_path / "staging" / "bzImage"
    data = bytearray(image.read_bytes())
    data[100] ^= 0xFF  # same size, different bytes
    image.write_bytes(bytes(data))
    got = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(remote.RemoteEntryRefused) as err:
        remote.install(KEY, tmp_path / "staging", want)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"remote cache entry {KEY} refused: bzImage has sha256 {got}" in msg
    assert f"the master recorded {files['bzImage']['sha256']}" in msg
    assert err.value.kind == "remote-entry-refused"
    # Atomic: no entry, no temporary directory, the lock is free for the local build.
    assert cache.lookup(KEY) is None
    assert [n for n in listing(isolated_env) if not n.startswith(".locks")] == []


def test_partial_entry_is_refused_and_an_existing_entry_is_kept(isolated_env: Path,
                                                                tmp_path: Path) -> None:
    files = published(tmp_path / "staging")
    want = remote.expected_files(files)
    remote.install(KEY, tmp_path / "staging", want)
    old = (isolated_env / KEY / "bzImage").read_bytes()
    published(tmp_path / "again")
    (tmp_path / "again" / "vmlinux").unlink()  # the transfer stopped half way
    with pytest.raises(remote.RemoteEntryRefused, match="vmlinux was not transferred"):
        remote.install(KEY, tmp_path / "again", want)
    assert (isolated_env / KEY / "bzImage").read_bytes() == old
    short = tmp_path / "short"
    published(short)
    (short / "bzImage").write_bytes((short / "bzImage").read_bytes()[:1000])
    with pytest.raises(remote.RemoteEntryRefused, match=r"bzImage has sha256 \w+ \(1000 bytes\)"):
        remote.install(KEY, short, want)
    assert not any(".tmp-" in n for n in listing(isolated_env))


def test_a_record_without_metadata_or_image_is_refused(isolated_env: Path,
                                                       tmp_path: Path) -> None:
    want = remote.expected_files(published(tmp_path / "s"))
    no_meta = {k: v for k, v in want.items() if k != "metadata.json"}
    with pytest.raises(remote.RemoteEntryRefused, match="recorded no metadata.json"):
        remote.install(KEY, tmp_path / "s", no_meta)
    no_image = {k: v for k, v in want.items() if k != "bzImage"}
    with pytest.raises(remote.RemoteEntryRefused, match="recorded no bzImage"):
        remote.install(KEY, tmp_path / "s", no_image)
    no_vmlinux = {k: v for k, v in want.items() if k != "vmlinux"}
    with pytest.raises(remote.RemoteEntryRefused, match="recorded no vmlinux, which its"):
        remote.install(KEY, tmp_path / "s", no_vmlinux)
    assert cache.lookup(KEY) is None


def test_parse_expect_refuses_bad_arguments() -> None:
    sha = "ab" * 32
    assert remote.parse_expect([f"bzImage={sha}:12"]) == {"bzImage": (sha, 12)}
    for bad in (f"SHA256SUMS={sha}:1", "bzImage=xyz:1", f"bzImage={sha}:-1", f"bzImage={sha}"):
        with pytest.raises(remote.KtstrError, match="NAME=SHA256:SIZE"):
            remote.parse_expect([bad])


def _phase_install(state: Path, staging: Path, files: dict, *extra: str):
    expect = [f"--expect={n}={sha}:{size}"
              for n, (sha, size) in remote.expected_files(files).items()]
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", "phase", "install", "--state", str(state),
         "--key", KEY, "--dir", str(staging), *expect, *extra, "--json"],
        capture_output=True, text=True, check=False)


def _state(path: Path) -> Path:
    state = BuildState()
    state.cache_key = KEY
    state.save(path)
    return path


def test_phase_install_marks_remote_hit_and_removes_staging(isolated_env: Path,
                                                            tmp_path: Path) -> None:
    state = _state(tmp_path / "state.json")
    files = published(tmp_path / "staging")
    proc = _phase_install(state, tmp_path / "staging", files, "--origin", "host1 build 3")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["installed"] is True and out["outcome"] == "remote-hit"
    assert out["entry_dir"] == str(isolated_env / KEY)
    loaded = BuildState.load(state)
    assert loaded.outcome == "remote-hit" and loaded.config_hash == "0badc0de"
    assert not (tmp_path / "staging").exists()


def test_phase_install_refusal_is_one_warning_and_leaves_the_state(isolated_env: Path,
                                                                   tmp_path: Path) -> None:
    state = _state(tmp_path / "state.json")
    files = published(tmp_path / "staging")
    (tmp_path / "staging" / "metadata.json").write_text(meta().dumps() + " ")
    proc = _phase_install(state, tmp_path / "staging", files)
    assert proc.returncode == 0
    out = json.loads(proc.stdout)
    assert out["installed"] is False and "metadata.json has sha256" in out["refused"]
    assert out["file"] == "metadata.json"
    assert out["expected"] == files["metadata.json"]["sha256"] != out["got"]
    warnings = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"ktstr-ci: warning: remote cache entry {KEY} refused: metadata.json")
    assert warnings[0].endswith("; building it here")
    assert BuildState.load(state).outcome is None
    assert cache.lookup(KEY) is None
    assert not (tmp_path / "staging").exists()


def test_phase_install_refuses_an_entry_of_another_key(isolated_env: Path,
                                                        tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    other = BuildState()
    other.cache_key = "local-7654321-x86_64-kcc0bd848c"
    other.save(state)
    files = published(tmp_path / "staging")
    proc = _phase_install(state, tmp_path / "staging", files)
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and out["installed"] is False
    assert f"cache key is {other.cache_key}, not {KEY}" in out["refused"]
    assert cache.lookup(KEY) is None and cache.lookup(other.cache_key) is None
    assert BuildState.load(state).outcome is None
