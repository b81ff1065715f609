"""The kernel cache: root, metadata.json, store, lookup, list, clean, force probe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ktstr_steps import cache
from ktstr_steps.cache import (
    CorruptEntry,
    KernelMetadata,
    KernelSource,
    MetadataError,
    ValidEntry,
)
from ktstr_steps.errors import KtstrError
from tests.support.cachekit import hold_lock, lock_is_free, meta, write_entry
from tests.support.vmlinux import build_vmlinux, sections

KEY = "6.14.2-tarball-x86_64-kcc0bd848c"


@pytest.fixture(scope="module")
def vmlinux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_vmlinux(tmp_path_factory.mktemp("vmlinux") / "vmlinux")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "src" / "bzImage"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"MZ fake bzImage " * 64)
    return p




def tree(root: Path) -> list[str]:
    """Every path under root (relative), for "nothing was left behind" checks."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---------------------------------------------------------------- root


def test_root_ktstr_cache_dir_verbatim(isolated_env: Path) -> None:
    assert cache.cache_root() == isolated_env  # no "kernels" suffix
    assert not isolated_env.exists()  # resolving creates nothing


def test_root_xdg_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTSTR_CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "ktstr" / "kernels"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "ktstr" / "kernels"


@pytest.mark.parametrize(
    ("home", "token"),
    [
        (None, "HOME is unset"),
        ("", "HOME is set to the empty string"),
        ("/", "HOME is `/`"),
        ("relative/dir", "is not an absolute path"),
    ],
)
def test_root_home_errors(monkeypatch: pytest.MonkeyPatch, home: str | None, token: str) -> None:
    monkeypatch.delenv("KTSTR_CACHE_DIR")
    if home is None:
        monkeypatch.delenv("HOME", raising=False)
    else:
        monkeypatch.setenv("HOME", home)
    with pytest.raises(KtstrError) as info:
        cache.cache_root()
    msg = str(info.value)
    assert token in msg
    assert "KTSTR_CACHE_DIR" in msg and "XDG_CACHE_HOME" in msg
    others = {"HOME is unset", "HOME is set to the empty string", "HOME is `/`"} - {token}
    assert not any(o in msg for o in others)


def test_root_non_utf8_ktstr_cache_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTSTR_CACHE_DIR", os.fsdecode(b"/tmp/bad-\xff-cache"))
    with pytest.raises(KtstrError, match="non-UTF-8"):
        cache.cache_root()


# ------------------------------------------------------------ metadata

GOLDEN = """{
  "version": "6.14.2",
  "source": {
    "type": "tarball"
  },
  "arch": "x86_64",
  "image_name": "bzImage",
  "config_hash": "0badc0de",
  "built_at": "2026-04-12T10:00:00Z",
  "ktstr_kconfig_hash": "c0bd848c",
  "extra_kconfig_hash": null,
  "has_vmlinux": false,
  "vmlinux_stripped": false,
  "source_vmlinux_size": null,
  "source_vmlinux_mtime_secs": null
}"""


def test_metadata_is_serde_pretty_json() -> None:
    # Byte-for-byte what serde_json::to_string_pretty writes for ktstr's struct.
    assert meta().dumps() == GOLDEN
    assert KernelMetadata.from_json(GOLDEN) == meta()


@pytest.mark.parametrize(
    ("source", "payload"),
    [
        (KernelSource.git("a1b2c3d", "v6.15-rc3"), {"git_hash": "a1b2c3d", "ref": "v6.15-rc3"}),
        (
            KernelSource.local("/src/linux", None),
            {"source_tree_path": "/src/linux", "git_hash": None},
        ),
    ],
)
def test_metadata_source_variants_round_trip(source: KernelSource, payload: dict) -> None:
    m = meta(source=source, version=None, source_vmlinux_size=123, source_vmlinux_mtime_secs=-5)
    obj = json.loads(m.dumps())
    assert obj["source"] == {"type": source.type, **payload}
    assert obj["source_vmlinux_mtime_secs"] == -5
    assert KernelMetadata.from_json(m.dumps()) == m


def test_metadata_reads_what_ktstr_writes() -> None:
    # Absent optional keys (older ktstr, or the snapshot without extra_kconfig_hash)
    # and unknown fields (newer ktstr) both parse, as with serde's defaults.
    text = json.dumps(
        {
            "source": {"type": "git"},
            "arch": "aarch64",
            "image_name": "Image",
            "built_at": "2026-01-01T00:00:00Z",
            "has_vmlinux": True,
            "vmlinux_stripped": True,
            "some_future_field": {"x": 1},
        }
    )
    m = KernelMetadata.from_json(text)
    assert m.source == KernelSource.git(None, None)
    assert m.extra_kconfig_hash is None and m.version is None and m.has_vmlinux


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (GOLDEN.replace('"built_at": "2026-04-12T10:00:00Z",\n', ""), "schema_drift"),
        (GOLDEN.replace('"has_vmlinux": false', '"has_vmlinux": "no"'), "schema_drift"),
        (GOLDEN.replace('"type": "tarball"', '"type": "svn"'), "schema_drift"),
        (
            GOLDEN.replace('"source_vmlinux_size": null', '"source_vmlinux_size": 1.5'),
            "schema_drift",
        ),
        (
            GOLDEN.replace('"source_vmlinux_size": null', '"source_vmlinux_size": -1'),
            "schema_drift",
        ),
        (GOLDEN.replace('"arch": "x86_64"', '"arch": null'), "schema_drift"),
        ('["not", "an", "object"]', "schema_drift"),
        ('{"arch": "x86_64", "arch": "aarch64"}', "schema_drift"),
        (GOLDEN[: len(GOLDEN) // 2], "truncated"),
        ('{"version": "6.1', "truncated"),
        ("", "truncated"),
        ("this is not json", "malformed"),
        (GOLDEN + "\ntrailing", "malformed"),
        (GOLDEN.replace("null", "NaN", 1), "malformed"),
        ('{"source_vmlinux_size": ' + "1" * 5000 + "}", "parse_error"),
    ],
)
def test_metadata_errors_are_classified(text: str, kind: str) -> None:
    with pytest.raises(MetadataError) as info:
        KernelMetadata.from_json(text)
    assert info.value.kind == kind
    assert cache.classify_corrupt_reason(str(info.value)) == kind
    assert str(info.value).startswith("metadata.json ")


def test_missing_required_field_names_it() -> None:
    text = GOLDEN.replace('  "source": {\n    "type": "tarball"\n  },\n', "")
    with pytest.raises(MetadataError, match="schema drift: missing field `source`"):
        KernelMetadata.from_json(text)


# ---------------------------------------------------------------- store


def test_store_and_lookup(
    isolated_env: Path, image: Path, vmlinux: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # The caller's has/stripped values are ignored: store sets what it did.
    entry = cache.store(
        KEY, image, vmlinux=vmlinux, metadata=meta(has_vmlinux=False, vmlinux_stripped=False)
    )
    assert entry.path == isolated_env / KEY
    assert entry.image_path.read_bytes() == image.read_bytes()
    assert entry.vmlinux_path == isolated_env / KEY / "vmlinux"
    assert sections(entry.vmlinux_path)[".text"]["type"] == "NOBITS"
    on_disk = json.loads((entry.path / "metadata.json").read_text())
    assert on_disk["has_vmlinux"] is True and on_disk["vmlinux_stripped"] is True
    assert set(on_disk) == set(json.loads(GOLDEN))  # nothing but ktstr's fields
    assert sorted(os.listdir(entry.path)) == ["bzImage", "metadata.json", "vmlinux"]
    assert tree(isolated_env) == sorted(
        [
            ".locks",
            f".locks/{KEY}.lock",
            KEY,
            f"{KEY}/bzImage",
            f"{KEY}/metadata.json",
            f"{KEY}/vmlinux",
        ]
    )
    assert lock_is_free(isolated_env, KEY)

    hit = cache.lookup(KEY)
    assert hit is not None and hit.metadata == entry.metadata
    assert "unstripped" not in capfd.readouterr().err


def test_store_without_vmlinux_records_false(isolated_env: Path, image: Path) -> None:
    entry = cache.store(
        KEY, image, vmlinux=None, metadata=meta(has_vmlinux=True, vmlinux_stripped=True)
    )
    assert entry.vmlinux_path is None
    assert not (entry.path / "vmlinux").exists()
    on_disk = json.loads((entry.path / "metadata.json").read_text())
    assert on_disk["has_vmlinux"] is False and on_disk["vmlinux_stripped"] is False


def test_store_raw_fallback_and_lookup_notice(
    isolated_env: Path, image: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "vmlinux"
    raw.write_bytes(b"not an ELF, strip must fail" * 100)
    entry = cache.store(KEY, image, vmlinux=raw, metadata=meta())
    err = capfd.readouterr().err
    assert f"cache: vmlinux strip failed for {KEY} (" in err
    assert "caching unstripped (larger on-disk payload)" in err
    assert "kernel list --json" in err  # ktstr pointed at a command that does not exist
    assert (entry.path / "vmlinux").read_bytes() == raw.read_bytes()
    assert entry.metadata.has_vmlinux and not entry.metadata.vmlinux_stripped

    notice = f"cache: using unstripped vmlinux for {KEY} (strip failed on a prior build; re-run with a clean cache to retry)"
    assert cache.lookup(KEY) is not None
    assert cache.lookup(KEY) is not None
    assert capfd.readouterr().err.count(notice) == 2  # every lookup, as ktstr


def test_store_replaces_existing_entry(isolated_env: Path, image: Path, tmp_path: Path) -> None:
    cache.store(KEY, image, vmlinux=None, metadata=meta(version="6.14.2"))
    (isolated_env / KEY / "leftover-from-old").write_text("old")
    new_image = tmp_path / "new-bzImage"
    new_image.write_bytes(b"new image")
    entry = cache.store(KEY, new_image, vmlinux=None, metadata=meta(version="6.14.3"))
    assert entry.image_path.read_bytes() == b"new image"
    assert cache.lookup(KEY).metadata.version == "6.14.3"
    # The displaced old entry went with the temp dir, nothing of it remains.
    assert not (isolated_env / KEY / "leftover-from-old").exists()
    assert [n for n in os.listdir(isolated_env) if n != ".locks"] == [KEY]


@pytest.mark.parametrize(
    "key", ["", "   ", "a/b", "a\\b", "..", ".", "a..b", "a\0b", ".tmp-6.14-123"]
)
def test_store_rejects_bad_keys_and_creates_nothing(
    isolated_env: Path, image: Path, key: str
) -> None:
    with pytest.raises(KtstrError) as info:
        cache.store(key, image, vmlinux=None, metadata=meta())
    assert info.value.kind == "bad-cache-key"
    assert str(info.value).startswith("cache key must not")
    assert not isolated_env.exists()


@pytest.mark.parametrize("name", ["", "../bzImage", "boot/bzImage", "a\0b"])
def test_store_rejects_bad_image_names(isolated_env: Path, image: Path, name: str) -> None:
    with pytest.raises(KtstrError, match="image name"):
        cache.store(KEY, image, vmlinux=None, metadata=meta(image_name=name))
    assert not isolated_env.exists()


def test_store_missing_image_creates_nothing(isolated_env: Path, tmp_path: Path) -> None:
    with pytest.raises(KtstrError, match="does not exist"):
        cache.store(KEY, tmp_path / "nope", vmlinux=None, metadata=meta())
    assert not isolated_env.exists()


def test_store_on_read_only_root(image: Path, tmp_path: Path) -> None:
    # Root ignores permission bits, so "read-only" here is a path under a regular file.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("file")
    root = blocker / "cache"
    with pytest.raises(KtstrError) as info:
        cache.store(KEY, image, vmlinux=None, metadata=meta(), root=root)
    msg = str(info.value)
    assert str(root) in msg and "KTSTR_CACHE_DIR" in msg
    assert blocker.read_text() == "file"
    assert sorted(os.listdir(tmp_path)) == ["not-a-dir", "src"]


def test_store_failing_install_leaves_no_debris_and_no_lock(
    isolated_env: Path, image: Path
) -> None:
    # A regular file where the entry directory should go: rename fails with ENOTDIR.
    isolated_env.mkdir()
    (isolated_env / KEY).write_text("squatter")
    with pytest.raises(KtstrError, match="atomic rename cache entry"):
        cache.store(KEY, image, vmlinux=None, metadata=meta())
    assert (isolated_env / KEY).read_text() == "squatter"
    assert not [n for n in os.listdir(isolated_env) if n.startswith(".tmp-")]
    assert lock_is_free(isolated_env, KEY)


def test_store_removes_own_and_dead_debris(isolated_env: Path, image: Path) -> None:
    isolated_env.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    keep = {
        f".tmp-otherkey-{os.getppid()}",  # alive (pytest's parent)
        ".tmp-otherkey-notapid",
        ".tmp-otherkey-",
        ".tmp-nodash",
        "unrelated-dir",
    }
    gone = {f".tmp-otherkey-{dead_pid}", ".tmp-k2-2147483647", f".tmp-{KEY}-{os.getpid()}"}
    for name in keep | gone:
        (isolated_env / name).mkdir()
        (isolated_env / name / "junk").write_text("x")
    cache.store(KEY, image, vmlinux=None, metadata=meta())
    names = set(os.listdir(isolated_env))
    assert keep <= names
    assert not gone & names


def test_store_keeps_provenance_out_of_metadata(isolated_env: Path, image: Path) -> None:
    entry = cache.store(
        KEY, image, vmlinux=None, metadata=meta(), provenance={"buildbot_build_id": 42}
    )
    assert json.loads((entry.path / "ktstr-ci.json").read_text()) == {"buildbot_build_id": 42}
    assert "buildbot_build_id" not in (entry.path / "metadata.json").read_text()


# --------------------------------------------------------------- lookup


def test_lookup_misses(isolated_env: Path, image: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert cache.lookup(KEY) is None  # no root at all
    cache.store(KEY, image, vmlinux=None, metadata=meta())
    assert cache.lookup("6.1.1-tarball-x86_64-kcc0bd848c") is None  # no entry

    (isolated_env / KEY / "bzImage").unlink()
    assert cache.lookup(KEY) is None  # image missing

    cache.store(KEY, image, vmlinux=None, metadata=meta())
    (isolated_env / KEY / "metadata.json").write_text("{")
    assert cache.lookup(KEY) is None  # unparsable

    (isolated_env / KEY / "metadata.json").unlink()
    assert cache.lookup(KEY) is None  # metadata missing

    capfd.readouterr()
    assert cache.lookup("../etc") is None  # invalid key: a warning, not an error
    err = capfd.readouterr().err
    assert "warning: invalid cache key: cache key must not contain path separators" in err


# ----------------------------------------------------------------- list


def test_list_valid_and_corrupt_kinds(isolated_env: Path) -> None:
    root = isolated_env
    write_entry(root, "new", meta(built_at="2026-05-01T00:00:00Z").dumps())
    write_entry(root, "old", meta(built_at="2025-01-01T00:00:00Z").dumps())
    write_entry(root, "mid", meta(built_at="2026-01-01T00:00:00Z").dumps())
    write_entry(root, "c-missing", None)
    (write_entry(root, "c-unreadable", None) / "metadata.json").mkdir()
    write_entry(root, "c-drift", GOLDEN.replace('"arch": "x86_64",\n', ""))
    write_entry(root, "c-malformed", "<html>502</html>")
    write_entry(root, "c-truncated", GOLDEN[:40])
    write_entry(root, "c-parse", '{"source_vmlinux_size": ' + "9" * 5000 + "}")
    write_entry(root, "c-image", meta().dumps(), image=False)
    (root / "c-nonutf8-meta").mkdir()
    (root / "c-nonutf8-meta" / "metadata.json").write_bytes(b'{"arch": "\xff"}')
    # Not entries at all:
    (root / ".locks").mkdir()
    write_entry(root, ".tmp-x-1", meta().dumps())
    write_entry(root, ".hidden", meta().dumps())
    (root / "a-regular-file").write_text("x")
    os.mkdir(os.path.join(os.fsencode(root), b"bad-\xff-name"))

    listed = cache.list_entries()
    assert [e.key for e in listed if isinstance(e, ValidEntry)] == ["new", "mid", "old"]
    corrupt = {e.key: e for e in listed if isinstance(e, CorruptEntry)}
    assert listed[3:] == sorted(corrupt.values(), key=lambda e: e.key)  # corrupt last
    assert {k: e.error_kind for k, e in corrupt.items()} == {
        "c-missing": "missing",
        "c-unreadable": "unreadable",
        "c-drift": "schema_drift",
        "c-malformed": "malformed",
        "c-truncated": "truncated",
        "c-parse": "parse_error",
        "c-image": "image_missing",
        "c-nonutf8-meta": "unreadable",
    }
    assert corrupt["c-missing"].reason == "metadata.json missing"
    assert corrupt["c-image"].reason == "image file bzImage missing from entry directory"
    assert corrupt["c-drift"].reason.startswith("metadata.json schema drift: missing field `arch`")


def test_list_missing_root_is_empty(isolated_env: Path) -> None:
    assert cache.list_entries() == []
    assert not isolated_env.exists()


def test_kconfig_status(isolated_env: Path) -> None:
    write_entry(isolated_env, "m", meta(ktstr_kconfig_hash="aaaa0000").dumps())
    write_entry(isolated_env, "s", meta(ktstr_kconfig_hash="bbbb0000").dumps())
    write_entry(isolated_env, "u", meta(ktstr_kconfig_hash=None).dumps())
    status = {e.key: e.kconfig_status("aaaa0000") for e in cache.list_entries()}
    assert status == {"m": "matches", "s": "stale", "u": "untracked"}


# ---------------------------------------------------------------- clean


@pytest.fixture
def populated(isolated_env: Path) -> Path:
    for i, day in enumerate(["03", "02", "01"]):
        write_entry(isolated_env, f"v{i}", meta(built_at=f"2026-01-{day}T00:00:00Z").dumps())
    write_entry(isolated_env, "broken", "{")
    return isolated_env


def keys(root: Path) -> set[str]:
    return {n for n in os.listdir(root) if not n.startswith(".")}


def test_clean_keep(populated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n = cache.clean(keep=1, corrupt_only=False, force=True)
    assert n == 3
    assert keys(populated) == {"v0"}  # the newest valid one
    assert capsys.readouterr().out.strip().endswith("removed 3 cached kernel(s).")


def test_clean_corrupt_only(populated: Path) -> None:
    assert cache.clean(keep=None, corrupt_only=True, force=True) == 1
    assert keys(populated) == {"v0", "v1", "v2"}
    out = []
    assert cache.clean(keep=None, corrupt_only=True, force=True, stdout=_Sink(out)) == 0
    assert "".join(out) == "nothing to clean\n"


def test_clean_all_keeps_locks_dir(populated: Path, image: Path) -> None:
    cache.store(KEY, image, vmlinux=None, metadata=meta())
    assert cache.clean(keep=None, corrupt_only=False, force=True) == 5
    assert os.listdir(populated) == [".locks"]


def test_clean_keep_conflicts_with_corrupt_only(populated: Path) -> None:
    with pytest.raises(KtstrError, match="--keep cannot be used with --corrupt-only"):
        cache.clean(keep=1, corrupt_only=True, force=True)
    assert keys(populated) == {"v0", "v1", "v2", "broken"}


def test_clean_needs_terminal_without_force(populated: Path) -> None:
    # pytest's stdin is not a terminal.
    assert not sys.stdin.isatty()
    with pytest.raises(KtstrError) as info:
        cache.clean(keep=None, corrupt_only=False, force=False)
    assert str(info.value) == "confirmation requires a terminal. Use --force to skip."
    assert keys(populated) == {"v0", "v1", "v2", "broken"}


@pytest.mark.parametrize(("answer", "removed"), [(False, 0), (True, 2)])
def test_clean_confirmation(
    populated: Path, capsys: pytest.CaptureFixture[str], answer: bool, removed: int
) -> None:
    prompts: list[str] = []

    def confirm(prompt: str) -> bool:
        prompts.append(prompt)
        return answer

    n = cache.clean(keep=2, corrupt_only=False, force=False, confirm=confirm)
    assert n == removed
    assert prompts == ["remove 2 entries? [y/N] "]
    out = capsys.readouterr().out
    assert out.startswith("the following entries will be removed:\n")
    assert "  v2 " in out and "  broken " in out and "(corrupt: metadata.json truncated" in out
    if answer:
        assert keys(populated) == {"v0", "v1"}
        assert out.endswith("removed 2 cached kernel(s).\n")
    else:
        assert keys(populated) == {"v0", "v1", "v2", "broken"}
        assert out.endswith("aborted\n")


def test_clean_partial_failure(populated: Path) -> None:
    stuck = populated / "v2" / "bzImage"
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode != 0:
        pytest.skip("filesystem has no immutable flag; partial failure not reproducible")
    try:
        with pytest.raises(KtstrError) as info:
            cache.clean(keep=None, corrupt_only=False, force=True)
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    assert str(info.value).startswith("removed 3 of 4 entries; remove v2: ")
    assert keys(populated) == {"v2"}


def test_clean_skips_entry_in_use(populated: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # A ktstr test VM holds SH on the entry lock while it boots the kernel.
    holder = hold_lock(populated / ".locks" / "v1.lock", "LOCK_SH")
    try:
        n = cache.clean(keep=None, corrupt_only=False, force=True)
    finally:
        holder.kill()
        holder.wait()
    assert n == 3
    assert keys(populated) == {"v1"}
    err = capfd.readouterr().err
    assert 'cache entry "v1" is in use' in err and f"pid={holder.pid}" in err


# ---------------------------------------------------------- force probe


def test_force_probe(isolated_env: Path, image: Path) -> None:
    cache.store(KEY, image, vmlinux=None, metadata=meta())
    lock = isolated_env / ".locks" / f"{KEY}.lock"
    reader = hold_lock(lock, "LOCK_SH")
    try:
        with pytest.raises(KtstrError) as info:
            cache.force_probe(KEY)
        msg = str(info.value)
        assert msg.startswith(
            f'cache entry "{KEY}" is locked by active test runs (lockfile {lock}, holders: '
        )
        assert f"pid={reader.pid} cmd=" in msg
        assert msg.endswith("Wait for those tests to finish, or kill them, then retry.")
        assert info.value.kind == "cache-entry-locked"
    finally:
        reader.kill()
        reader.wait()
    cache.force_probe(KEY)  # free now
    assert lock_is_free(isolated_env, KEY)  # and the probe did not keep it


def test_force_probe_rejects_bad_key(isolated_env: Path) -> None:
    with pytest.raises(KtstrError, match="path traversal"):
        cache.force_probe("6.1..x")
    assert not isolated_env.exists()


class _Sink:
    def __init__(self, out: list[str]) -> None:
        self.out = out

    def write(self, s: str) -> int:
        self.out.append(s)
        return len(s)

    def flush(self) -> None:
        pass
