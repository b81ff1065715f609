"""`ktstr-ci kernel build` end to end on the fake kernel tree: every branch of ktstr's pipeline.

Each test runs the real command (real make, gcc, git, flock, cgroups) in a
subprocess and reads its one JSON object from stdout.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.cli import ktstr
from tests.support.fakekernel import git, make_fake_kernel

ALL_OUTCOMES = {
    "cached",
    "cache-hit",
    "dirty-not-cached",
    "non-git-not-cached",
    "changed-during-build",
    "store-failed",
    "failed",
}


def assert_no_sandbox_left() -> None:
    """No ktstr-build-<ns>-<pid> cgroup (v1 or v2) outlived its owner.

    Builds of other live processes may legitimately have one right now.
    """
    import psutil

    left = [
        p
        for base in (Path("/sys/fs/cgroup/cpuset"), Path("/sys/fs/cgroup"))
        if base.is_dir()
        for p in base.glob("ktstr-build-*")
        if not psutil.pid_exists(int(p.name.rsplit("-", 1)[1]))
    ]
    assert left == []


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_fake_kernel(tmp_path / "linux")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_clean_git_tree_is_built_and_cached(tree: Path, isolated_env: Path):
    rc, res, err = ktstr("kernel", "build", "--source", str(tree), "--json")
    assert rc == 0, err
    assert res["ok"] is True and res["outcome"] == "cached"
    head7 = git(tree, "rev-parse", "--short=7", "HEAD").strip()
    assert res["cache_key"].startswith(f"local-{head7}-x86_64-kc{res['kconfig_hash']}")
    entry = Path(res["entry_dir"])
    assert entry.parent == isolated_env and entry.name == res["cache_key"]
    assert (entry / "bzImage").is_file() and (entry / "vmlinux").is_file()
    meta = json.loads((entry / "metadata.json").read_text())
    assert meta["source"] == {"type": "local", "source_tree_path": str(tree.resolve()), "git_hash": head7}
    assert meta["has_vmlinux"] is True and meta["vmlinux_stripped"] is True
    assert meta["config_hash"] == res["config_hash"]
    assert res["image_path"] == str(entry / "bzImage")
    assert f"✓ Kernel cached: {res['cache_key']}" in err
    for phase in ("reserve", "source_lock", "configure", "make", "validate", "compile_commands", "store"):
        assert phase in res["phases"], phase
    assert (tree / "compile_commands.json").is_file()
    assert set(res) >= {"extra_kconfig_hash", "dirty", "warnings", "errors"}


def test_second_build_is_a_cache_hit_without_make(tree: Path):
    rc, first, _ = ktstr("kernel", "build", "--source", str(tree), "--json")
    assert rc == 0 and first["outcome"] == "cached"
    vmlinux_mtime = (tree / "vmlinux").stat().st_mtime_ns
    rc, second, err = ktstr("kernel", "build", "--source", str(tree), "--json")
    assert rc == 0 and second["outcome"] == "cache-hit"
    # The tree now has a .config (ktstr keys it as cfg...); we still find the entry (ktstr would rebuild it).
    assert second["entry_dir"] == first["entry_dir"]
    assert "make" not in second["phases"]
    assert (tree / "vmlinux").stat().st_mtime_ns == vmlinux_mtime
    assert "cached kernel found:" in err and "use --force to rebuild" in err


def test_force_rebuilds_a_cached_kernel(tree: Path):
    assert ktstr("kernel", "build", "--source", str(tree), "--json")[1]["outcome"] == "cached"
    rc, res, _ = ktstr("kernel", "build", "--source", str(tree), "--force", "--json")
    assert rc == 0 and res["outcome"] == "cached" and "make" in res["phases"]


def test_dirty_tree_is_built_but_not_cached(tree: Path, isolated_env: Path):
    (tree / "init" / "main.c").write_text((tree / "init" / "main.c").read_text() + "\n/* edit */\n")
    rc, res, err = ktstr("kernel", "build", "--source", str(tree), "--json")
    assert rc == 0
    assert res["outcome"] == "dirty-not-cached" and res["dirty"] is True
    assert res["cache_key"].startswith("local-unknown-")
    assert "commit or stash to enable caching" in err
    assert res["image_path"] == str(tree / "arch/x86/boot/bzImage")
    assert not any(p.is_dir() and not p.name.startswith(".") for p in isolated_env.iterdir())


def test_non_git_tree_is_built_but_not_cached(tmp_path: Path, isolated_env: Path):
    tree = make_fake_kernel(tmp_path / "plain", git=False)
    rc, res, err = ktstr("kernel", "build", "--source", str(tree), "--json")
    assert rc == 0 and res["outcome"] == "non-git-not-cached" and res["is_git"] is False
    assert "not a git repository" in err and "commit or stash" not in err
    assert not any(p.is_dir() and not p.name.startswith(".") for p in isolated_env.iterdir())


def test_tree_changed_during_build_is_not_cached(tree: Path, tmp_path: Path, isolated_env: Path):
    slow = write(tmp_path / "slow.kconfig", "CONFIG_KTSTR_FAKE_SLEEP=4\n")
    p = subprocess.Popen(
        ["ktstr-ci", "kernel", "build", "--source", str(tree), "--extra-kconfig", str(slow), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (tree / ".config").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # configure done, make is sleeping before the link
        (tree / "README").write_text("edited while the kernel was building\n")
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    res = json.loads(out)
    assert p.returncode == 0, err
    assert res["outcome"] == "changed-during-build"
    assert "source tree changed during build" in err and "hash_changed=false" in err
    assert not (isolated_env / res["cache_key"]).exists()


def test_store_failure_is_reported_and_not_fatal(tree: Path, isolated_env: Path):
    # The lookup tells us the key; a regular file where the entry must go makes
    # the atomic install fail for real.
    state = tree.parent / "state.json"
    rc, look, _ = ktstr("phase", "lookup", "--state", str(state), "--source", str(tree), "--json")
    assert rc == 0
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / look["cache_key"]).write_text("in the way\n")
    rc, res, err = ktstr("kernel", "build", "--source", str(tree), "--json")
    assert rc == 0, "a store failure is only a warning in ktstr"
    assert res["outcome"] == "store-failed"
    assert "cache store failed:" in err
    assert [e["kind"] for e in res["errors"]] == ["store-failed"]
    assert not [p for p in isolated_env.iterdir() if p.name.startswith(".tmp-")]


def test_extra_kconfig_override_and_dropped_line_warnings(tree: Path, tmp_path: Path):
    extra = write(
        tmp_path / "extra.kconfig",
        "# CONFIG_KPROBES is not set\nCONFIG_KPROBES=y\nCONFIG_KTSTR_FAKE_NEEDS_DEP=y\n",
    )
    extra2 = write(tmp_path / "extra2.kconfig", "CONFIG_KTSTR_FAKE_NEEDS_DEP=y\nCONFIG_DEBUG_FS=n\n")
    rc, res, err = ktstr("kernel", "build", "--source", str(tree), "--extra-kconfig", str(extra2), "--json")
    assert rc == 0, err
    assert {o["symbol"] for o in res["overrides"]} == {"CONFIG_DEBUG_FS"}
    assert "--extra-kconfig overrides baked-in CONFIG_DEBUG_FS (was =y, now =n)" in err
    assert [d["line"] for d in res["dropped"]] == ["CONFIG_KTSTR_FAKE_NEEDS_DEP=y"]
    assert "did not survive `make olddefconfig`" in err
    assert res["extra_kconfig_hash"] and res["cache_key"].endswith(f"-xkc{res['extra_kconfig_hash']}")
    assert res["outcome"] == "cached"
    assert extra.exists()


def test_validation_failure_names_the_missing_option(tree: Path, tmp_path: Path):
    extra = write(tmp_path / "nobtf.kconfig", "# CONFIG_DEBUG_INFO_BTF is not set\n")
    rc, res, err = ktstr("kernel", "build", "--source", str(tree), "--extra-kconfig", str(extra), "--json")
    assert rc == 1
    assert res["ok"] is False and res["outcome"] == "failed"
    msg = res["errors"][-1]["message"]
    assert "critical config options are missing" in msg
    assert "CONFIG_DEBUG_INFO_BTF not set" in msg and "CONFIG_SCHED_CLASS_EXT not set" in msg
    assert res["errors"][-1]["kind"] == "validation"


def test_make_failure_names_the_target_and_keeps_the_log(tree: Path, tmp_path: Path, isolated_env: Path):
    extra = write(tmp_path / "break.kconfig", "CONFIG_KTSTR_FAKE_BREAK=y\n")
    rc, res, err = ktstr("kernel", "build", "--source", str(tree), "--extra-kconfig", str(extra), "--json")
    assert rc == 1 and res["outcome"] == "failed"
    assert res["failed_target"] and "ext" in res["failed_target"]
    assert res["make_errors"] >= 1
    assert res["errors"][-1]["kind"] == "make-failed"
    assert Path(res["make_log"]).is_file() and "error" in Path(res["make_log"]).read_text()
    assert_no_sandbox_left()


def test_make_warnings_are_counted(tree: Path, tmp_path: Path):
    extra = write(tmp_path / "warn.kconfig", "CONFIG_KTSTR_FAKE_WARN=y\n")
    rc, res, _ = ktstr("kernel", "build", "--source", str(tree), "--extra-kconfig", str(extra), "--json")
    assert rc == 0 and res["make_warnings"] >= 1


def test_tiny_profile_is_64bit_and_keyed_apart_from_defconfig(tree: Path):
    rc, tiny, err = ktstr("kernel", "build", "--source", str(tree), "--profile", "tiny", "--json")
    assert rc == 0, err
    assert tiny["base_config"] == "tinyconfig" and tiny["cache_key"].endswith("-base-tinyconfig")
    assert "CONFIG_64BIT=y" in (tree / ".config").read_text().splitlines()


# -- bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_path, pattern",
    [
        (lambda tmp: tmp / "nope", "does not exist|not a directory"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "not a kernel source tree"),
    ],
)
def test_bad_source_is_a_clear_error(tmp_path: Path, isolated_env: Path, make_path, pattern):
    rc, res, err = ktstr("kernel", "build", "--source", str(make_path(tmp_path)), "--json")
    assert rc == 1 and res["outcome"] == "failed"
    import re

    assert re.search(pattern, res["errors"][0]["message"])
    assert not isolated_env.exists() or not list(isolated_env.glob("*/"))


def test_malformed_extra_kconfig_line_is_rejected_before_anything_runs(tree: Path, tmp_path: Path):
    extra = write(tmp_path / "bad.kconfig", "CONFIG_OK=y\nSCHED_EXT=y\n")
    rc, res, err = ktstr("kernel", "build", "--source", str(tree), "--extra-kconfig", str(extra), "--json")
    assert rc == 1
    msg = res["errors"][0]["message"]
    assert "bad.kconfig:2" in msg and "SCHED_EXT=y" in msg
    assert not (tree / ".config").exists()


def test_non_utf8_extra_kconfig_is_rejected(tree: Path, tmp_path: Path):
    extra = tmp_path / "latin1.kconfig"
    extra.write_bytes(b"CONFIG_LOCALVERSION=\"caf\xe9\"\n")
    rc, res, _ = ktstr("kernel", "build", "--source", str(tree), "--extra-kconfig", str(extra), "--json")
    assert rc == 1 and "UTF-8" in res["errors"][0]["message"]


def test_unknown_profile_lists_the_known_ones(tree: Path):
    rc, res, _ = ktstr("kernel", "build", "--source", str(tree), "--profile", "nosuch", "--json")
    assert rc == 1 and "tiny" in res["errors"][0]["message"]


def test_cache_root_on_unusable_path_is_a_clear_error(tree: Path, tmp_path: Path):
    blocker = write(tmp_path / "file", "")
    rc, res, err = ktstr(
        "kernel", "build", "--source", str(tree), "--json", env={"KTSTR_CACHE_DIR": str(blocker / "cache")}
    )
    assert rc == 1 and res["outcome"] == "failed"
    assert str(blocker) in res["errors"][0]["message"]
    assert_no_sandbox_left()


def test_cap_and_bypass_conflict_is_a_resource_contract_error(tree: Path):
    rc, res, err = ktstr(
        "kernel", "build", "--source", str(tree), "--cpu-cap", "1", "--json",
        env={"KTSTR_BYPASS_LLC_LOCKS": "1"},
    )
    assert rc == 1 and "resource contract" in err


@pytest.mark.parametrize("cap", ["0", "-1", "abc", "99999"])
def test_bad_cpu_cap_is_refused_before_building(tree: Path, cap: str):
    rc, res, err = ktstr("kernel", "build", "--source", str(tree), "--cpu-cap", cap, "--json")
    assert rc == 1 and res["ok"] is False
    assert "cpu-cap" in err.lower() or "cpu" in res["errors"][0]["message"].lower()
    assert not (tree / ".config").exists()


# -- versions from a (loopback) kernel.org ------------------------------------------


def test_version_build_downloads_builds_and_caches(kernel_org, isolated_env: Path):
    kernel_org.set_releases([("stable", "6.14.9"), ("longterm", "6.12.8")])
    kernel_org.add_fake_kernel("6.12.8")
    rc, res, err = ktstr("kernel", "build", "6.12", "--json")
    assert rc == 0, err
    assert res["outcome"] == "cached" and res["version"] == "6.12.8"
    assert res["cache_key"].startswith("6.12.8-tarball-x86_64-kc")
    assert "downloading" in err
    assert "compile_commands" not in res["phases"], "temporary trees get no compile_commands.json"
    rc, again, err = ktstr("kernel", "build", "6.12.8", "--json")
    assert rc == 0 and again["outcome"] == "cache-hit"
    assert kernel_org.count(kernel_org.tarball_path("6.12.8")) == 1, "a hit never downloads"


def test_unknown_version_is_a_clear_error(kernel_org):
    kernel_org.set_releases([("stable", "6.14.9")])
    rc, res, err = ktstr("kernel", "build", "6.14.99", "--json")
    assert rc == 1 and "6.14.99 not found" in res["errors"][0]["message"]


def test_html_error_page_instead_of_tarball(kernel_org):
    kernel_org.set_route(kernel_org.tarball_path("6.13.2"), b"<html>oops</html>", content_type="text/html")
    rc, res, _ = ktstr("kernel", "build", "6.13.2", "--json")
    assert rc == 1 and "HTML instead of tarball" in res["errors"][0]["message"]


def test_json_outcome_is_always_one_of_the_documented_values(tree: Path):
    rc, res, _ = ktstr("kernel", "build", "--source", str(tree), "--json")
    assert res["outcome"] in ALL_OUTCOMES


def test_clean_runs_mrproper_on_local_trees_and_keys_without_the_deleted_config(tree: Path):
    rc, first, _ = ktstr("kernel", "build", "--source", str(tree), "--json")
    assert rc == 0 and (tree / ".config").is_file()
    rc, res, err = ktstr("kernel", "build", "--source", str(tree), "--clean", "--force", "--json")
    assert rc == 0, err
    assert "ktstr-ci: make mrproper" in err
    # mrproper deletes .config before configure, so the key is the no-.config one (ktstr keys it with the deleted one).
    assert "-cfg" not in res["cache_key"] and res["cache_key"] == first["cache_key"]
    assert res["outcome"] == "cached"


def test_clean_on_a_downloaded_version_only_says_it_is_meaningless(kernel_org):
    kernel_org.set_releases([("stable", "6.14.9")])
    kernel_org.add_fake_kernel("6.14.9")
    rc, res, err = ktstr("kernel", "build", "6.14.9", "--clean", "--json")
    assert rc == 0 and res["outcome"] == "cached"
    assert "--clean is only meaningful with --source (downloaded sources start clean)" in err
    assert "make mrproper" not in err
