"""A profile build's configure is a no-op when nothing it reads changed (the configure stamp).

The phases run as the real ``ktstr-ci phase lookup`` / ``phase configure``
commands on fake kernel trees, as a build's steps run them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ktstr_steps.configstamp import STAMP_NAME, inputs_digest, touches_kconfig
from tests.support.fakekernel import git, make_fake_kernel

SKIPPED_LINE = "ktstr-ci: configure: unchanged inputs, skipped"


def phase(*args: str) -> tuple[int, dict, str]:
    p = subprocess.run(["ktstr-ci", "phase", *args, "--json"], capture_output=True, text=True,
                       env=dict(os.environ), stdin=subprocess.DEVNULL, timeout=120)
    return p.returncode, (json.loads(p.stdout) if p.stdout.strip() else {}), p.stderr


def configure(tree: Path, state: Path, *lookup_args: str) -> tuple[dict, str]:
    rc, _, err = phase("lookup", "--state", str(state), "--source", str(tree), *lookup_args)
    assert rc == 0, err
    rc, out, err = phase("configure", "--state", str(state))
    assert rc == 0, err
    return out, err


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_fake_kernel(tmp_path / "linux")


@pytest.mark.parametrize("path,touches", [
    ("Kconfig", True), ("kernel/sched/Kconfig.ext", True), ("scripts/kconfig/conf.c", True),
    ("kernel/configs/tiny.config", True), ("arch/x86/configs/x86_64_defconfig", True),
    ("kernel/sched/ext.c", False), ("README", False), ("arch/x86/Makefile", False),
])
def test_which_changes_can_change_the_configuration(path: str, touches: bool):
    assert touches_kconfig(path) is touches


def test_digest_covers_every_input_and_a_base_files_bytes(tmp_path: Path):
    base = dict(base_config="tinyconfig", baked="CONFIG_A=y\n", extra=None, arch="x86_64",
                make_vars=["ARCH=x86_64"])
    digests = {inputs_digest(**base)}
    for name, value in (("base_config", "defconfig"), ("baked", "CONFIG_B=y\n"),
                        ("extra", "CONFIG_C=y\n"), ("arch", "aarch64"), ("make_vars", [])):
        digests.add(inputs_digest(**{**base, name: value}))
    assert len(digests) == 6
    cfg = tmp_path / "base.config"
    cfg.write_text("CONFIG_X=y\n")
    one = inputs_digest(**{**base, "base_config": str(cfg)})
    cfg.write_text("CONFIG_Y=y\n")
    assert inputs_digest(**{**base, "base_config": str(cfg)}) != one


def test_second_configure_with_the_same_inputs_is_skipped(tree: Path, tmp_path: Path):
    state = tmp_path / "state.json"
    first, err = configure(tree, state, "--profile", "tiny")
    assert first["configured"] is True and first["skipped"] is None
    assert SKIPPED_LINE not in err
    assert (tree / STAMP_NAME).is_file()
    mtime = (tree / ".config").stat().st_mtime_ns
    again, err = configure(tree, state, "--profile", "tiny")
    assert again == {**again, "configured": False, "skipped": "unchanged inputs"}
    assert SKIPPED_LINE in err
    assert "olddefconfig" not in err
    assert (tree / ".config").stat().st_mtime_ns == mtime


def test_a_commit_without_kconfig_changes_keeps_the_skip(tree: Path, tmp_path: Path):
    state = tmp_path / "state.json"
    configure(tree, state, "--profile", "tiny")
    (tree / "kernel/sched/ext.c").write_text((tree / "kernel/sched/ext.c").read_text() + "\n")
    git(tree, "commit", "-qam", "one .c file")
    out, err = configure(tree, state, "--profile", "tiny")
    assert out["skipped"] == "unchanged inputs" and SKIPPED_LINE in err


def test_a_commit_changing_kconfig_configures_again(tree: Path, tmp_path: Path):
    state = tmp_path / "state.json"
    configure(tree, state, "--profile", "tiny")
    (tree / "Kconfig").write_text((tree / "Kconfig").read_text() + "\n# a new comment\n")
    git(tree, "commit", "-qam", "Kconfig")
    out, err = configure(tree, state, "--profile", "tiny")
    assert out["skipped"] is None and SKIPPED_LINE not in err


def test_other_profile_inputs_configure_again(tree: Path, tmp_path: Path):
    state = tmp_path / "state.json"
    configure(tree, state, "--profile", "tiny")
    out, err = configure(tree, state, "--profile", "tiny-preempt")
    assert out["skipped"] is None and SKIPPED_LINE not in err
    out, err = configure(tree, state, "--profile", "tiny-preempt")
    assert out["skipped"] == "unchanged inputs"


def test_an_edited_config_is_configured_from_the_profile_again(tree: Path, tmp_path: Path):
    state = tmp_path / "state.json"
    configure(tree, state, "--profile", "tiny")
    clean = (tree / ".config").read_bytes()
    (tree / ".config").write_bytes(clean + b"CONFIG_KTSTR_FAKE_WARN=y\n")
    out, err = configure(tree, state, "--profile", "tiny")
    assert out["skipped"] is None and SKIPPED_LINE not in err
    # The leftover .config is no input of a profile build: the profile's config is back.
    assert (tree / ".config").read_bytes() == clean


def test_a_patched_tree_always_configures_and_drops_the_stamp(tree: Path, tmp_path: Path):
    state = tmp_path / "state.json"
    configure(tree, state, "--profile", "tiny")
    (tree / "Kconfig").write_text((tree / "Kconfig").read_text() + "\n# patched\n")
    out, err = configure(tree, state, "--profile", "tiny")
    assert out["skipped"] is None and SKIPPED_LINE not in err
    assert not (tree / STAMP_NAME).exists()


def test_source_build_without_profile_keeps_ktstrs_configure(tree: Path, tmp_path: Path):
    state = tmp_path / "state.json"
    configure(tree, state)
    out, err = configure(tree, state)
    assert out["skipped"] is None and SKIPPED_LINE not in err
    assert not (tree / STAMP_NAME).exists()
