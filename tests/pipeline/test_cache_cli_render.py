"""``kernel list`` rendering (ktstr_steps/cli_render.py): text (stdout rows, stderr legends) and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ktstr_steps import cache, cli_render
from ktstr_steps.cache import KernelSource
from ktstr_steps.kernelorg import versions
from tests.support.cachekit import meta, write_entry

CURRENT = "c0bd848c"


@pytest.fixture
def root(isolated_env: Path) -> Path:
    r = isolated_env
    write_entry(
        r, "6.14.2-tarball-x86_64-kcc0bd848c", meta(built_at="2026-04-12T10:00:00Z").dumps()
    )
    write_entry(
        r,
        "6.6.1-tarball-x86_64-kc11111111",
        meta(
            version="6.6.1", ktstr_kconfig_hash="11111111", built_at="2026-03-01T00:00:00Z"
        ).dumps(),
    )
    write_entry(
        r,
        "local-1a2b3c4-x86_64-kcc0bd848c",
        meta(
            version=None,
            source=KernelSource.local("/src/linux", "1a2b3c4"),
            ktstr_kconfig_hash=None,
            built_at="2026-02-01T00:00:00Z",
        ).dumps(),
    )
    write_entry(
        r,
        "6.15-rc3-tarball-x86_64-kcc0bd848c",
        meta(version="6.15-rc3", built_at="2026-01-01T00:00:00Z").dumps(),
    )
    write_entry(r, "broken", '{"arch": ')
    return r


ROWS = [
    "  KEY                                              VERSION      SOURCE   ARCH    BUILT",
    "  6.14.2-tarball-x86_64-kcc0bd848c                 6.14.2       tarball  x86_64  2026-04-12T10:00:00Z",
    "  6.6.1-tarball-x86_64-kc11111111                  6.6.1        tarball  x86_64  2026-03-01T00:00:00Z (stale kconfig) (EOL)",
    "  local-1a2b3c4-x86_64-kcc0bd848c                  -            local    x86_64  2026-02-01T00:00:00Z (untracked kconfig)",
    "  6.15-rc3-tarball-x86_64-kcc0bd848c               6.15-rc3     tarball  x86_64  2026-01-01T00:00:00Z",
    "  broken                                           (corrupt: metadata.json truncated: ",
]


def test_text_rows_and_legends(root: Path) -> None:
    out, err = cli_render.render_list_text(
        cache.list_entries(), root, CURRENT, {"6.14", "6.15", "6.12"}, None
    )
    lines = out.splitlines()
    assert lines[:5] == ROWS[:5]
    assert lines[5].startswith(ROWS[5])
    assert len(lines) == 6

    err_lines = err.splitlines()
    assert err_lines[0] == f"cache: {root}"
    # Fixed order: EOL, untracked, stale, corrupt count + footer.
    assert err_lines[1] == cli_render.EOL_EXPLANATION
    assert err_lines[2] == cli_render.UNTRACKED_EXPLANATION
    assert err_lines[3] == cli_render.STALE_EXPLANATION
    assert err_lines[4] == "1 corrupt entry. Run `ktstr-ci kernel clean --corrupt-only` to remove."
    assert err_lines[5].startswith("warning: entries marked (corrupt) cannot be used")
    assert str(root) in err_lines[5] and "`kernel clean --corrupt-only --force`" in err_lines[5]
    assert len(err_lines) == 6
    assert "(EOL)" not in err.split("\n", 1)[0]  # legends never on stdout, rows never on stderr
    assert "corrupt entry" not in out


def test_legends_only_for_rendered_tags(isolated_env: Path) -> None:
    write_entry(isolated_env, "a", meta().dumps())
    write_entry(isolated_env, "b", "")
    write_entry(isolated_env, "c", "nope")
    out, err = cli_render.render_list_text(cache.list_entries(), isolated_env, CURRENT, {"6.14"}, None)
    assert "(stale" not in out and "(untracked" not in out and "(EOL)" not in out
    assert cli_render.EOL_EXPLANATION not in err
    assert cli_render.STALE_EXPLANATION not in err
    assert cli_render.UNTRACKED_EXPLANATION not in err
    assert "2 corrupt entries." in err


def test_fetch_error_disables_eol(root: Path) -> None:
    out, err = cli_render.render_list_text(
        cache.list_entries(), root, CURRENT, {"6.14"}, "HTTP 503 from releases.json"
    )
    assert "(EOL)" not in out
    first = err.splitlines()[0]
    assert first.startswith(
        "kernel list: failed to fetch active kernel series (HTTP 503 from releases.json)"
    )
    assert "EOL annotation disabled for this run" in first
    assert cli_render.EOL_EXPLANATION not in err
    assert err.splitlines()[1] == f"cache: {root}"


def test_unknown_active_list_means_no_eol(root: Path) -> None:
    out, _ = cli_render.render_list_text(cache.list_entries(), root, CURRENT, None, None)
    assert "(EOL)" not in out
    out, _ = cli_render.render_list_text(cache.list_entries(), root, CURRENT, set(), None)
    assert "(EOL)" not in out


def test_empty_cache(isolated_env: Path) -> None:
    out, err = cli_render.render_list_text([], isolated_env, CURRENT, {"6.14"}, None)
    assert out == "no cached kernels. Run `kernel build` to download and build a kernel.\n"
    assert err == f"cache: {isolated_env}\n"


@pytest.mark.parametrize(
    ("version", "prefix"),
    [
        ("6.12.81", "6.12"),
        ("7.0", "7.0"),
        ("6.15-rc3", "6.15"),
        ("6.16-rc2-next-20260420", "6.16"),
        ("abc", None),
        ("6.abc", None),
    ],
)
def test_series_of(version: str, prefix: str | None) -> None:
    assert versions.series_of(version) == prefix


def test_json(root: Path) -> None:
    doc = cli_render.list_json(cache.list_entries(), CURRENT, {"6.14", "6.15"}, None)
    json.dumps(doc)  # serializable as is
    assert list(doc) == ["current_ktstr_kconfig_hash", "active_prefixes_fetch_error", "entries"]
    assert doc["current_ktstr_kconfig_hash"] == CURRENT
    assert doc["active_prefixes_fetch_error"] is None
    entries = {e["key"]: e for e in doc["entries"]}
    valid = entries["6.6.1-tarball-x86_64-kc11111111"]
    assert set(valid) == {
        "key", "path", "version", "source", "arch", "built_at", "ktstr_kconfig_hash",
        "extra_kconfig_hash", "kconfig_status", "eol", "config_hash", "image_name",
        "image_path", "has_vmlinux", "vmlinux_stripped",
    }  # fmt: skip
    assert valid["kconfig_status"] == "stale" and valid["eol"] is True
    assert valid["source"] == {"type": "tarball"}
    assert valid["image_path"] == str(root / "6.6.1-tarball-x86_64-kc11111111" / "bzImage")
    assert valid["path"] == str(root / "6.6.1-tarball-x86_64-kc11111111")
    local = entries["local-1a2b3c4-x86_64-kcc0bd848c"]
    assert local["kconfig_status"] == "untracked" and local["eol"] is False
    assert local["source"] == {
        "type": "local",
        "source_tree_path": "/src/linux",
        "git_hash": "1a2b3c4",
    }
    assert entries["6.15-rc3-tarball-x86_64-kcc0bd848c"]["eol"] is False
    assert entries["6.14.2-tarball-x86_64-kcc0bd848c"]["kconfig_status"] == "matches"
    broken = entries["broken"]
    assert set(broken) == {"key", "path", "error", "error_kind"}
    assert broken["error_kind"] == "truncated"
    assert broken["error"].startswith("metadata.json truncated: ")
    assert [e["key"] for e in doc["entries"]][-1] == "broken"


def test_json_fetch_error(root: Path) -> None:
    doc = cli_render.list_json(cache.list_entries(), CURRENT, {"6.14"}, "timed out")
    assert doc["active_prefixes_fetch_error"] == "timed out"
    assert not any(e.get("eol") for e in doc["entries"])
