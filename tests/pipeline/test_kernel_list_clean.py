"""`ktstr-ci kernel list` and `kernel clean` through the real command."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import ktstr
from tests.support.fakekernel import make_fake_kernel


def test_list_shows_built_kernel_and_corrupt_entry(tmp_path: Path, isolated_env: Path):
    tree = make_fake_kernel(tmp_path / "linux")
    rc, res, _ = ktstr("kernel", "build", "--source", str(tree), "--json")
    assert rc == 0
    (isolated_env / "broken-entry").mkdir()
    (isolated_env / "broken-entry" / "metadata.json").write_text("{not json")
    rc, listing, err = ktstr("kernel", "list", "--offline", "--json")
    assert rc == 0
    by_key = {e["key"]: e for e in listing["entries"]}
    assert by_key[res["cache_key"]]["kconfig_status"] == "matches"
    assert by_key[res["cache_key"]]["has_vmlinux"] is True
    assert by_key["broken-entry"]["error_kind"] in ("malformed", "truncated", "parse_error")
    rc, _, err = ktstr("kernel", "list", "--offline")
    assert f"cache: {isolated_env}" in err


def test_empty_cache_list_says_how_to_fill_it():
    import subprocess

    p = subprocess.run(["ktstr-ci", "kernel", "list", "--offline"], capture_output=True, text=True)
    assert p.returncode == 0 and "no cached kernels" in p.stdout


def test_clean_needs_a_terminal_or_force(tmp_path: Path, isolated_env: Path):
    tree = make_fake_kernel(tmp_path / "linux")
    rc, res, _ = ktstr("kernel", "build", "--source", str(tree), "--json")
    rc, _, err = ktstr("kernel", "clean")
    assert rc == 1 and "confirmation requires a terminal. Use --force to skip." in err
    assert Path(res["entry_dir"]).is_dir(), "nothing removed without confirmation"
    import subprocess

    p = subprocess.run(["ktstr-ci", "kernel", "clean", "--force"], capture_output=True, text=True)
    assert p.returncode == 0 and "removed 1 cached kernel(s)." in p.stdout + p.stderr
    assert not Path(res["entry_dir"]).exists()


def test_clean_corrupt_only_keeps_valid_entries(tmp_path: Path, isolated_env: Path):
    tree = make_fake_kernel(tmp_path / "linux")
    rc, res, _ = ktstr("kernel", "build", "--source", str(tree), "--json")
    (isolated_env / "junk").mkdir()
    rc, _, _ = ktstr("kernel", "clean", "--corrupt-only", "--force")
    assert rc == 0
    assert Path(res["entry_dir"]).is_dir() and not (isolated_env / "junk").exists()


def test_keep_and_corrupt_only_conflict():
    rc, _, err = ktstr("kernel", "clean", "--keep", "1", "--corrupt-only", "--force")
    assert rc == 1 and "--keep" in err and "--corrupt-only" in err


def test_list_json_is_parseable_on_empty_cache():
    rc, listing, _ = ktstr("kernel", "list", "--offline", "--json")
    assert rc == 0 and listing["entries"] == [] and "current_ktstr_kconfig_hash" in listing
    json.dumps(listing)
