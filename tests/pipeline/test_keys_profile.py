"""Profile builds are keyed by commit and profile inputs only; ``--source`` keeps ktstr's rules.

The lookups run the real ``ktstr-ci phase lookup`` against fake kernel trees,
so the keys are the ones a build would store and look up.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ktstr_steps import keys
from ktstr_steps.errors import KtstrError
from tests.support.fakekernel import git, make_fake_kernel


def lookup(*args: str) -> tuple[int, dict, str]:
    p = subprocess.run(["ktstr-ci", "phase", "lookup", *args, "--json"], capture_output=True,
                       text=True, env=dict(os.environ), stdin=subprocess.DEVNULL, timeout=120)
    return p.returncode, (json.loads(p.stdout) if p.stdout.strip() else {}), p.stderr


def head(tree: Path) -> str:
    return git(tree, "rev-parse", "HEAD").strip()


def test_profile_key_is_the_plain_local_key():
    assert keys.profile_key("1a2b3c4", "x86_64", "kcc0bd848c") == "local-1a2b3c4-x86_64-kcc0bd848c"


@pytest.mark.parametrize("rev", ["1A2B3C4D" * 5, "ab" * 32])
def test_revision_hash7_takes_the_first_seven_of_a_full_id(rev: str):
    assert keys.revision_hash7(rev) == rev[:7].lower()


@pytest.mark.parametrize("rev", ["", "HEAD", "main", "1a2b3c4", "g" * 40, "a" * 41])
def test_revision_hash7_refuses_what_is_not_a_full_commit_id(rev: str):
    with pytest.raises(KtstrError, match="not a full commit id") as exc:
        keys.revision_hash7(rev)
    assert exc.value.kind == "bad-revision"


def test_leftover_config_is_no_input_of_a_profile_build(tmp_path: Path):
    tree = make_fake_kernel(tmp_path / "a")
    state = str(tmp_path / "s.json")
    rc, fresh, err = lookup("--state", state, "--source", str(tree), "--profile", "tiny")
    assert rc == 0, err
    (tree / ".config").write_text("CONFIG_LEFTOVER=y\n")
    rc, again, err = lookup("--state", state, "--source", str(tree), "--profile", "tiny")
    assert rc == 0, err
    assert again["cache_key"] == fresh["cache_key"]
    assert "-cfg" not in again["cache_key"]
    assert f"cache key: {again['cache_key']}" in err


def test_same_commit_and_profile_give_one_key_in_any_tree(tmp_path: Path):
    a = make_fake_kernel(tmp_path / "a")
    b = tmp_path / "b"
    git(tmp_path, "clone", "-q", str(a), str(b))
    git(b, "checkout", "-q", "-b", "topic")
    (a / ".config").write_text("CONFIG_A=y\n")
    state = str(tmp_path / "s.json")
    keys_seen = set()
    for tree in (a, b):
        rc, out, err = lookup("--state", state, "--source", str(tree), "--profile", "tiny")
        assert rc == 0, err
        keys_seen.add(out["cache_key"])
    rc, out, err = lookup("--state", state, "--revision", head(a), "--profile", "tiny")
    assert rc == 0, err
    keys_seen.add(out["cache_key"])
    assert len(keys_seen) == 1
    assert keys_seen.pop().startswith(f"local-{head(a)[:7]}-")


def test_another_profile_is_another_key(tmp_path: Path):
    tree = make_fake_kernel(tmp_path / "a")
    state = str(tmp_path / "s.json")
    got = {lookup("--state", state, "--source", str(tree), "--profile", p)[1]["cache_key"]
           for p in ("tiny", "default", "tiny-preempt")}
    assert len(got) == 3


def test_source_build_without_profile_keeps_ktstrs_cfg_key(tmp_path: Path):
    tree = make_fake_kernel(tmp_path / "a")
    (tree / ".config").write_text("CONFIG_LEFTOVER=y\n")
    rc, out, err = lookup("--state", str(tmp_path / "s.json"), "--source", str(tree))
    assert rc == 0, err
    crc = keys.crc32_hex(b"CONFIG_LEFTOVER=y\n")
    assert f"-cfg{crc}-" in out["cache_key"]


def test_revision_lookup_needs_a_profile_and_a_full_id(tmp_path: Path):
    state = str(tmp_path / "s.json")
    rc, out, err = lookup("--state", state, "--revision", "a" * 40)
    assert rc != 0 and "--revision needs --profile" in err
    rc, out, err = lookup("--state", state, "--revision", "main", "--profile", "tiny")
    assert rc != 0 and out["errors"][0]["kind"] == "bad-revision"
