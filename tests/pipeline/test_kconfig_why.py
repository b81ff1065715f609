"""Why a dropped option was dropped, from a tree's own Kconfig (kconfiglib).

Fast tests on a small hand-written Kconfig tree; one ``realkernel`` test on
Debian's linux-source-6.12, whose Kconfig files only are unpacked.
"""

from __future__ import annotations

import os
import tarfile
import time
from pathlib import Path

import kconfiglib
import pytest

from ktstr_steps import kconfig_why

KCONFIG = """\
mainmenu "test tree"

config MODULES
\tbool "Enable loadable module support"
\tmodules
\tdefault n
\thelp
\t  Kernel modules are small pieces of compiled code.

config B
\tbool "b"

config A
\tbool "a"
\tdepends on B && MODULES

config C
\ttristate "c"

config HIDDEN
\tbool

config SELECTOR
\tbool "selector"
\tdefault y
\tselect HIDDEN

config WITH_PROMPT_IF
\tbool "visible only with B" if B
"""


def write_tree(root: Path, kconfig: str = KCONFIG, config: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Kconfig").write_text(kconfig)
    (root / ".config").write_text(config)
    return root


def test_bare_modules_keyword_is_what_stops_plain_kconfiglib(tmp_path):
    tree = write_tree(tmp_path / "t")
    os.environ["srctree"] = str(tree)
    try:
        with pytest.raises(kconfiglib.KconfigError, match="modules"):
            kconfiglib.Kconfig("Kconfig", warn=False)
    finally:
        del os.environ["srctree"]
    kconf = kconfig_why.parse_tree(tree, "x86_64")
    assert kconf.modules.name == "MODULES"
    assert (tree / "Kconfig").read_text() == KCONFIG  # the tree is never touched


def test_reasons_name_the_failing_dependency_with_its_value(tmp_path):
    tree = write_tree(tmp_path / "t", config="CONFIG_SELECTOR=y\n")
    reasons = kconfig_why.explain_dropped(
        tree, [("A", "y"), ("C", "m"), ("NOPE", "y"), ("HIDDEN", "n"), ("HIDDEN", "y"),
               ("WITH_PROMPT_IF", "y")], arch="x86_64")
    assert reasons["A"] == "depends on B (=n) && MODULES (=n)"
    assert reasons["C"] == "depends on MODULES (=n)"
    assert reasons["NOPE"] == "not defined in this tree's Kconfig"
    # The last (symbol, requested) pair of a symbol wins, as in the fragment.
    assert reasons["HIDDEN"] == "has no prompt: only set when selected by another option"
    assert reasons["WITH_PROMPT_IF"] == "prompt hidden: B (=n)"
    assert kconfig_why.explain_dropped(tree, [("HIDDEN", "n")], arch="x86_64") == {
        "HIDDEN": "selected by SELECTOR (=y)"}


def test_reason_follows_the_final_config(tmp_path):
    tree = write_tree(tmp_path / "t", config="CONFIG_B=y\n")
    assert kconfig_why.explain_dropped(tree, [("A", "y")], arch="x86_64") == {
        "A": "depends on MODULES (=n)"}


def test_unparsable_tree_says_where_and_does_not_fail(tmp_path):
    tree = write_tree(tmp_path / "t", kconfig="config A\n\tbool \"a\"\n\tfrobnicate\n")
    [(sym, why)] = kconfig_why.explain_dropped(tree, [("A", "y")], arch="x86_64").items()
    assert sym == "A"
    assert why.startswith("dependency not evaluated: ")
    assert "Kconfig:3" in why and "frobnicate" in why


def test_parse_is_cached_per_tree_and_commit(tmp_path, monkeypatch):
    tree = write_tree(tmp_path / "t")
    cache = tmp_path / "run"
    kconfig_why.load_tree(tree, "x86_64", cache_dir=cache, commit="1a2b3c4")
    [pickled] = (cache / kconfig_why.PARSE_DIR).glob("*.pickle")

    def no_parse(*args, **kwargs):
        raise AssertionError("parsed again instead of loading the cached parse")

    monkeypatch.setattr(kconfig_why, "parse_tree", no_parse)
    kconf = kconfig_why.load_tree(tree, "x86_64", cache_dir=cache, commit="1a2b3c4")
    assert "A" in kconf.syms
    # Another commit is another parse; a tree without a commit is never cached.
    with pytest.raises(AssertionError, match="parsed again"):
        kconfig_why.load_tree(tree, "x86_64", cache_dir=cache, commit="d4e5f6a")
    with pytest.raises(AssertionError, match="parsed again"):
        kconfig_why.load_tree(tree, "x86_64", cache_dir=cache, commit=None)
    assert pickled.is_file()


def test_old_parses_are_pruned(tmp_path):
    tree = write_tree(tmp_path / "t")
    cache = tmp_path / "run"
    for n in range(kconfig_why.KEEP_PARSES + 2):
        kconfig_why.load_tree(tree, "x86_64", cache_dir=cache, commit=f"c{n}")
    assert len(list((cache / kconfig_why.PARSE_DIR).glob("*.pickle"))) == kconfig_why.KEEP_PARSES


# -- the real 6.12 tree -------------------------------------------------------------------

TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")


def _kconfig_member(m: tarfile.TarInfo) -> bool:
    rel = m.name.split("/", 1)[-1]
    return "Kconfig" in rel.rsplit("/", 1)[-1] or rel.startswith("scripts/")


@pytest.mark.realkernel
def test_real_612_tree_names_sched_class_ext_blockers(tmp_path):
    if not TARBALL.is_file():
        raise AssertionError(f"{TARBALL} is missing: `make test` installs linux-source-6.12")
    with tarfile.open(TARBALL) as tf:
        tf.extractall(tmp_path, members=[m for m in tf if _kconfig_member(m)], filter="data")
    tree = tmp_path / "linux-source-6.12"
    (tree / ".config").write_text("CONFIG_BPF=y\nCONFIG_BPF_SYSCALL=y\n")
    start = time.monotonic()
    kconf = kconfig_why.load_tree(tree, "x86_64", cache_dir=tmp_path / "run", commit="v6.12")
    parsed = time.monotonic() - start
    assert len(kconf.unique_defined_syms) > 15000, len(kconf.unique_defined_syms)
    assert kconfiglib.expr_str(kconf.syms["SCHED_CLASS_EXT"].direct_dep) == (
        "BPF_SYSCALL && BPF_JIT && DEBUG_INFO_BTF")
    start = time.monotonic()
    reasons = kconfig_why.explain_dropped(tree, [("SCHED_CLASS_EXT", "y")], arch="x86_64",
                                          cache_dir=tmp_path / "run", commit="v6.12")
    cached = time.monotonic() - start
    assert reasons == {"SCHED_CLASS_EXT": "depends on BPF_JIT (=n) && DEBUG_INFO_BTF (=n)"}
    print(f"6.12 Kconfig: {len(kconf.unique_defined_syms)} symbols, parse {parsed:.1f}s, "
          f"from the cached parse {cached:.1f}s")
