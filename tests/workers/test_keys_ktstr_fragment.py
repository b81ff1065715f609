"""ktstr's own keys: ``[kconfig] ktstr_fragment`` sets the kc<crc> suffix; ``kernel key`` prints keys."""

from __future__ import annotations

import json
import os
import re
import subprocess
import zlib
from pathlib import Path

import pytest

import settings as S
from ktstr_steps.paths import KTSTR_KCONFIG_ENV
from launcher.service import Service
from tests.support.fakekernel import git, make_fake_kernel

REV = "50f08422ec898d46a1b2c3d4e5f60718293a4b5c"


def key(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict, str]:
    p = subprocess.run(["ktstr-ci", "kernel", "key", *args, "--json"], capture_output=True,
                       text=True, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                       timeout=60)
    return p.returncode, (json.loads(p.stdout) if p.stdout.strip() else {}), p.stderr


def crc(path: Path) -> str:
    return f"{zlib.crc32(path.read_bytes()) & 0xFFFFFFFF:08x}"


@pytest.fixture
def fragment(tmp_path: Path) -> Path:
    p = tmp_path / "ktstr.kconfig"
    p.write_bytes(b"# the user's ktstr\nCONFIG_SCHED_CLASS_EXT=y\nCONFIG_BPF=y\n")
    return p


def test_suffix_is_the_crc32_of_the_given_file(fragment: Path):
    rc, out, err = key("--revision", REV, "--kconfig", str(fragment))
    assert rc == 0, err
    assert out["kconfig_hash"] == crc(fragment)
    assert out["cache_key"] == f"local-{REV[:7]}-x86_64-kc{crc(fragment)}"


def test_the_environment_the_launcher_sets_gives_the_same_suffix(fragment: Path):
    rc, out, err = key("--revision", REV, env={KTSTR_KCONFIG_ENV: str(fragment)})
    assert rc == 0, err
    assert out["cache_key"].endswith(f"-kc{crc(fragment)}")


def test_defconfig_keys_have_ktstrs_exact_format(fragment: Path, tmp_path: Path):
    # ktstr: local-{hash7}-{arch}-kc{S} for a clean git tree without .config; the
    # default profile is defconfig + ktstr.kconfig, so nothing else may appear.
    rc, out, err = key("--revision", REV, "--kconfig", str(fragment))
    assert rc == 0, err
    assert re.fullmatch(r"local-[0-9a-f]{7}-(x86_64|aarch64)-kc[0-9a-f]{8}", out["cache_key"])
    assert out["base_config"] == "defconfig" and out["extra_kconfig_hash"] is None
    tree = make_fake_kernel(tmp_path / "linux")
    head = git(tree, "rev-parse", "HEAD").strip()
    rc, by_tree, err = key("--source", str(tree), "--kconfig", str(fragment))
    assert rc == 0, err
    rc, by_rev, err = key("--revision", head, "--kconfig", str(fragment))
    assert by_tree["cache_key"] == by_rev["cache_key"] == f"local-{head[:7]}-x86_64-kc{crc(fragment)}"


def test_extra_and_base_suffixes_follow_ktstr_and_ours(fragment: Path, tmp_path: Path):
    extra = tmp_path / "x.kconfig"
    extra.write_text("CONFIG_PREEMPT=y\n")
    rc, out, err = key("--revision", REV, "--kconfig", str(fragment), "--profile", "tiny",
                       "--extra-kconfig", str(extra))
    assert rc == 0, err
    assert out["cache_key"] == (f"local-{REV[:7]}-x86_64-kc{crc(fragment)}"
                                f"-xkc{out['extra_kconfig_hash']}-base-tinyconfig")


def test_source_keeps_ktstrs_cfg_rule(fragment: Path, tmp_path: Path):
    tree = make_fake_kernel(tmp_path / "linux")
    (tree / ".config").write_text("CONFIG_X=y\n")
    rc, out, err = key("--source", str(tree), "--kconfig", str(fragment))
    assert rc == 0, err
    assert f"-cfg{crc(tree / '.config')}-kc{crc(fragment)}" in out["cache_key"]


def test_missing_kconfig_file_is_one_clear_error(tmp_path: Path):
    rc, out, err = key("--revision", REV, "--kconfig", str(tmp_path / "nope"))
    assert rc != 0
    assert "no such file; give the ktstr.kconfig your ktstr uses" in err
    rc, out, err = key("--revision", REV, env={KTSTR_KCONFIG_ENV: str(tmp_path / "nope")})
    assert rc != 0 and f"point {KTSTR_KCONFIG_ENV}" in err


def test_plain_output_is_the_key_alone():
    p = subprocess.run(["ktstr-ci", "kernel", "key", "--revision", REV], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(rf"local-{REV[:7]}-x86_64-kc[0-9a-f]{{8}}\n", p.stdout)


# -- the setting -------------------------------------------------------------------


def test_setting_is_read_as_an_absolute_path(tmp_path: Path, fragment: Path):
    f = tmp_path / "settings.toml"
    f.write_text(f'[kconfig]\nktstr_fragment = "{fragment.name}"\n')
    s = S.load(f, root=tmp_path)
    assert s.kconfig.ktstr_fragment == fragment
    assert S.load(S.DEFAULT_FILE, root=tmp_path).kconfig.ktstr_fragment is None


def test_setting_a_missing_file_names_the_key_and_the_fix(tmp_path: Path):
    f = tmp_path / "settings.toml"
    f.write_text('[kconfig]\nktstr_fragment = "/nowhere/ktstr.kconfig"\n')
    with pytest.raises(S.SettingsError) as exc:
        S.load(f, root=tmp_path)
    msg = str(exc.value)
    assert f"settings file {f}: kconfig.ktstr_fragment /nowhere/ktstr.kconfig does not exist" in msg
    assert "point it at the ktstr.kconfig your ktstr uses" in msg


def test_setting_reaches_the_workers_environment(tmp_path: Path, fragment: Path,
                                                 monkeypatch: pytest.MonkeyPatch):
    f = tmp_path / "settings.toml"
    f.write_text(f'[kconfig]\nktstr_fragment = "{fragment}"\n')
    monkeypatch.setenv(KTSTR_KCONFIG_ENV, "/stale/from/the/shell")
    env = Service(S.load(f, root=tmp_path)).child_env()
    assert env[KTSTR_KCONFIG_ENV] == str(fragment)
    env = Service(S.load(S.DEFAULT_FILE, root=tmp_path)).child_env()
    assert KTSTR_KCONFIG_ENV not in env
