"""Every rebuild says why: the nearest cached entry and what differs from it.

The pure function on identities, then the real lookup on the fake tree (a new
commit after a cached build), then the cache-lookup step's summary.
"""

from __future__ import annotations

import json
import os
import subprocess

from buildbot.process.results import SUCCESS
from twisted.trial import unittest

from ktstr_steps.buildsteps import CacheLookup
from ktstr_steps.explain import FIRST_BUILD, Candidate, differences, explain, nearest
from tests.support.fakekernel import git, make_fake_kernel
from tests.support.steps_harness import STATE, TREE, KtstrStepMixin, ktstr

GCC12 = "gcc (Debian 12.2.0-14) 12.2.0"
GCC13 = "gcc (GCC) 13.1.0"


def ident(**over):
    base = {
        "commit": "d4e5f6a", "profile": "preempt",
        "base_config": {"name": "defconfig", "hash": "11111111"},
        "ktstr_kconfig_hash": "0123abcd",
        "fragments": [{"name": "preempt.kconfig", "hash": "aaaaaaaa"}],
        "arch": "x86_64", "make_vars": {"ARCH": "x86_64", "KCFLAGS": "-Wno-error"},
        "toolchain": {"gcc": GCC13, "ld": "GNU ld (GNU Binutils) 2.40", "pahole": "v1.24"},
        "host": "h1",
    }
    base.update(over)
    return base


def test_first_build_without_an_entry_of_the_profile():
    other = Candidate("k-tiny", ident(profile="tiny"), "2025-01-01T00:00:00Z")
    assert explain(ident(), []) == FIRST_BUILD
    assert explain(ident(), [other]) == FIRST_BUILD


def test_commit_fragment_and_gcc_named_with_old_and_new():
    old = ident(commit="a1b2c3d", fragments=[{"name": "preempt.kconfig", "hash": "bbbbbbbb"}],
                toolchain={**ident()["toolchain"], "gcc": GCC12})
    text = explain(ident(), [Candidate("local-a1b2c3d-x86_64-kc0123abcd", old, "2025-01-01")],
                   is_ancestor=lambda c: True, files_changed=lambda c: 3)
    assert text == (
        "nearest cached entry `local-a1b2c3d-x86_64-kc0123abcd` differs in: "
        "commit (a1b2c3d → d4e5f6a, 3 files changed), "
        "fragment `preempt.kconfig` (bbbbbbbb → aaaaaaaa), gcc 12.2.0 → 13.1.0"
    )


def test_every_input_compared():
    old = ident(base_config={"name": "tinyconfig", "hash": "x"}, ktstr_kconfig_hash="ffffffff",
                fragments=[{"name": "gone.kconfig", "hash": "1"}], arch="aarch64",
                make_vars={"ARCH": "arm64"}, toolchain={"gcc": GCC13, "ld": "GNU ld 2.39",
                                                        "pahole": "v1.24"})
    assert differences(ident(), old) == [
        "base config (tinyconfig → defconfig)",
        "ktstr.kconfig (ffffffff → 0123abcd)",
        "fragment `preempt.kconfig` added",
        "fragment `gone.kconfig` removed",
        "arch (aarch64 → x86_64)",
        "make ARCH (arm64 → x86_64)",
        "make KCFLAGS (none → -Wno-error)",
        "ld 2.39 → 2.40",
    ]
    assert differences(ident(), ident()) == []


def test_nearest_is_the_newest_ancestor_else_the_newest():
    newest = Candidate("new", ident(commit="9999999"), "2025-03-01")  # another branch
    ancestor = Candidate("anc", ident(commit="a1b2c3d"), "2025-02-01")
    older = Candidate("old", ident(commit="0000000"), "2025-01-01")
    cands = [older, newest, ancestor]
    assert nearest(ident(), cands, lambda c: c in ("a1b2c3d", "0000000")).key == "anc"
    assert nearest(ident(), cands, lambda c: False).key == "new"


# -- the real lookup ----------------------------------------------------------------------


def _run(*args: str) -> dict:
    p = subprocess.run(["ktstr-ci", *args, "--json"], capture_output=True, text=True,
                       timeout=300, stdin=subprocess.DEVNULL, env=dict(os.environ))
    assert p.stdout.strip(), p.stderr
    return json.loads(p.stdout)


def test_lookup_after_a_commit_names_the_cached_parent(tmp_path, isolated_env):
    tree = make_fake_kernel(tmp_path / "linux")
    first = _run("kernel", "build", "--source", str(tree), "--profile", "tiny")
    assert first["outcome"] == "cached", first["errors"]
    old = git(tree, "rev-parse", "--short=7", "HEAD").strip()
    (tree / "README").write_text("changed\n")
    git(tree, "commit", "-qam", "touch README")
    new = git(tree, "rev-parse", "--short=7", "HEAD").strip()
    res = _run("phase", "lookup", "--state", str(tmp_path / "state.json"), "--source",
               str(tree), "--profile", "tiny")
    assert res["hit"] is False
    assert res["explanation"] == (
        f"nearest cached entry `{first['cache_key']}` differs in: "
        f"commit ({old} → {new}, 1 file changed)"
    )
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["explanation"] == res["explanation"]
    # The same key again is a hit: nothing to explain.
    again = _run("kernel", "build", "--source", str(tree), "--profile", "tiny")
    assert again["outcome"] == "cached" and again["explanation"] == res["explanation"]
    hit = _run("kernel", "build", "--source", str(tree), "--profile", "tiny")
    assert hit["outcome"] == "cache-hit" and hit["explanation"] is None


# -- the cache-lookup step ----------------------------------------------------------------


def lookup():
    return ktstr("phase", "lookup", "--state", STATE, "--source", TREE, "--profile", "tiny",
                 "--json")


class TestLookupSummary(KtstrStepMixin, unittest.TestCase):
    def test_miss_summary_says_why_make_runs(self) -> None:
        why = "nearest cached entry `k1` differs in: commit (a1b2c3d → d4e5f6a, 3 files changed)"
        self.setup_ktstr_step(CacheLookup(profile="tiny"))
        self.expect_commands(lookup().answer({
            "cache_key": "k2", "hit": False, "entry_dir": None, "dirty": False, "is_git": True,
            "git_hash": "d4e5f6a", "outcome": None, "explanation": why}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string=f"cache miss k2: {why}")
        self.expect_property("rebuild_explanation", why)
        return self.run_step()

    def test_first_build_summary(self) -> None:
        self.setup_ktstr_step(CacheLookup(profile="tiny"))
        self.expect_commands(lookup().answer({
            "cache_key": "k2", "hit": False, "entry_dir": None, "dirty": False, "is_git": True,
            "git_hash": "d4e5f6a", "outcome": None, "explanation": FIRST_BUILD}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string=f"cache miss k2: {FIRST_BUILD}")
        return self.run_step()

