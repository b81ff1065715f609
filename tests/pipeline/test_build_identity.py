"""What a build records beyond its key: identity, requested vs effective config, sizes, warnings.

Unit tests of the pure pieces, then the real `ktstr-ci kernel build` on the fake
tree: its JSON carries the whole identity, the dropped option with the reason
read from the tree's Kconfig, the output sizes and gcc's warning as data.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ktstr_steps import build_facts, identity
from ktstr_steps.make_warnings import WarningCollector, new_warnings, parse_warning
from ktstr_steps.results import BuildResult
from tests.support.fakekernel import git, make_fake_kernel

GCC_WARNING = ("init/main.c:12:9: warning: unused variable 'ktstr_fake_unused' "
               "[-Wunused-variable]")


# -- make's warnings as data --------------------------------------------------------


def test_gcc_warning_parsed_into_file_line_message():
    assert parse_warning(GCC_WARNING) == {
        "file": "init/main.c", "line": 12,
        "message": "unused variable 'ktstr_fake_unused' [-Wunused-variable]",
    }


def test_tool_warnings_keep_the_tool_as_file_and_no_line():
    assert parse_warning("ld: warning: arch/x86/boot/x.o: missing .note.GNU-stack") == {
        "file": "ld", "line": None, "message": "arch/x86/boot/x.o: missing .note.GNU-stack"}
    assert parse_warning("WARNING: modpost: vmlinux: section mismatch")["file"] == "modpost"


def test_non_warnings_are_not_collected():
    assert parse_warning("  CC      init/main.o") is None
    assert parse_warning("Makefile:12: warning: overriding recipe for target 'x'") is None
    assert parse_warning("init/main.c:3:1: error: expected ';'") is None


def test_collector_keeps_a_header_warning_once():
    c = WarningCollector()
    for _ in range(3):  # one header, included by three files
        c("include/linux/x.h:5:1: warning: 'f' defined but not used [-Wunused-function]")
    c(GCC_WARNING)
    assert [w["file"] for w in c.items] == ["include/linux/x.h", "init/main.c"]


def test_collector_is_bounded():
    c = WarningCollector(limit=2)
    for n in range(5):
        c(f"a.c:{n}:1: warning: w{n}")
    assert len(c.items) == 2


def test_new_warnings_ignore_line_numbers():
    old = [{"file": "a.c", "line": 10, "message": "unused x"}]
    new = [{"file": "a.c", "line": 14, "message": "unused x"},
           {"file": "b.c", "line": 1, "message": "unused y"},
           {"file": "b.c", "line": 9, "message": "unused y"}]
    assert new_warnings(new, old) == [{"file": "b.c", "message": "unused y"}]
    assert new_warnings(old, new) == []


# -- identity ------------------------------------------------------------------------


def test_make_vars_and_config_symbols():
    assert identity.make_vars_dict(["ARCH=x86_64", "KCFLAGS=-Wno-error", "V"]) == {
        "ARCH": "x86_64", "KCFLAGS": "-Wno-error"}
    text = "# c\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\nCONFIG_D=n\n"
    assert identity.config_symbols(text) == {"A": "y", "C": '"x"'}


def test_base_config_hash_follows_the_tree_files(tmp_path):
    tree = make_fake_kernel(tmp_path / "linux", git=False)
    first = identity.base_config_identity("defconfig", tree, "x86_64")
    assert first["name"] == "defconfig" and first["hash"]
    (tree / "arch/x86/configs/x86_64_defconfig").write_text("CONFIG_SMP=n\n")
    assert identity.base_config_identity("defconfig", tree, "x86_64")["hash"] != first["hash"]
    f = tmp_path / "my.config"
    f.write_text("CONFIG_X=y\n")
    assert identity.base_config_identity(str(f), None, "x86_64")["name"] == "my.config"


def test_toolchain_lines_are_the_tools_own():
    tc = identity.toolchain()
    assert set(tc) == {"gcc", "ld", "pahole"}
    assert tc["gcc"] and "gcc" in tc["gcc"].lower()
    assert tc["ld"] and "ld" in tc["ld"]


def test_config_lists_requested_vs_effective(tmp_path):
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / ".config").write_text("CONFIG_A=y\n# CONFIG_B is not set\n")
    over, drop = build_facts.config_lists(
        tree, [{"symbol": "CONFIG_A", "was": "is not set", "now": "=y"}],
        [{"line": "CONFIG_B=y", "final_state": "# CONFIG_B is not set"},
         {"line": "CONFIG_C=y", "final_state": "(absent)"}],
        arch="x86_64", cache_dir=None, commit=None,
    )
    assert over == [{"symbol": "A", "requested": "y", "effective": "y"}]
    assert [(d["symbol"], d["requested"], d["effective"]) for d in drop] == [
        ("B", "y", "n"), ("C", "y", None)]
    # No Kconfig in this tree: the reason says so instead of failing the build.
    assert all(d["reason"].startswith("dependency not evaluated: ") for d in drop)


def test_result_object_round_trips_the_new_fields():
    res = BuildResult(identity={"commit": "1a2b3c4"}, explanation="first build",
                      config_dropped=[{"symbol": "X", "requested": "y", "effective": "n",
                                       "reason": "depends on Y (=n)"}],
                      build_warnings=[{"file": "a.c", "line": 1, "message": "m"}],
                      bzimage_bytes=10, config_symbols={"X": "y"})
    back = BuildResult.from_json(json.loads(json.dumps(res.to_json())))
    assert back == res
    with pytest.raises(ValueError, match="bzimage_bytes"):
        BuildResult.from_json({"bzimage_bytes": "10"})


# -- the real command on the fake tree ------------------------------------------------


def _build(tree: Path, *extra: str) -> dict:
    p = subprocess.run(["ktstr-ci", "kernel", "build", "--source", str(tree), *extra, "--json"],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                       env=dict(os.environ))
    assert p.stdout.strip(), p.stderr
    return json.loads(p.stdout)


def test_kernel_build_records_identity_outputs_and_warnings(tmp_path, isolated_env):
    tree = make_fake_kernel(tmp_path / "linux")
    frag = tmp_path / "warn.kconfig"
    frag.write_text("CONFIG_KTSTR_FAKE_WARN=y\nCONFIG_KTSTR_FAKE_NEEDS_DEP=y\n")
    res = _build(tree, "--extra-kconfig", str(frag))
    assert res["ok"] and res["outcome"] == "cached", res["errors"]
    ident = res["identity"]
    assert ident["commit"] == git(tree, "rev-parse", "--short=7", "HEAD").strip()
    assert ident["base_config"]["name"] == "defconfig" and ident["base_config"]["hash"]
    assert ident["ktstr_kconfig_hash"] == res["kconfig_hash"]
    assert ident["fragments"] == [{"name": "warn.kconfig", "hash": res["extra_kconfig_hash"]}]
    assert ident["arch"] == "x86_64" and ident["make_vars"]["ARCH"] == "x86_64"
    assert ident["toolchain"]["gcc"] and ident["host"]
    # The dropped option says why, from the fake tree's own Kconfig.
    [dropped] = res["config_dropped"]
    assert dropped == {"symbol": "KTSTR_FAKE_NEEDS_DEP", "requested": "y", "effective": "n",
                       "reason": "depends on KTSTR_FAKE_DEP (=n)"}
    assert "KTSTR_FAKE_NEEDS_DEP dropped: depends on KTSTR_FAKE_DEP (=n)" in res["warnings"]
    # Sizes of what was built and stored.
    entry = Path(res["entry_dir"])
    assert res["bzimage_bytes"] == (entry / "bzImage").stat().st_size
    assert res["vmlinux_bytes"] == (tree / "vmlinux").stat().st_size
    assert res["vmlinux_stripped_bytes"] == (entry / "vmlinux").stat().st_size
    assert res["vmlinux_stripped_bytes"] < res["vmlinux_bytes"]
    # gcc's warning as data, once.
    [w] = res["build_warnings"]
    assert w["file"] == "init/main.c" and isinstance(w["line"], int)
    assert "unused variable" in w["message"]
    assert res["config_symbols"]["KTSTR_FAKE_WARN"] == "y"
    assert res["explanation"] == "first build of this commit and profile"
    # The entry keeps the identity for the next miss to compare against.
    prov = json.loads((entry / "ktstr-ci.json").read_text())
    assert prov["identity"] == ident


def test_a_release_tarball_is_identified_by_its_version_tag():
    from ktstr_steps.buildstate import BuildState

    state = BuildState(kind="tarball", version="6.12.3", arch="x86_64", profile="tiny",
                       base_config="tinyconfig", kconfig_hash="0123abcd",
                       fragments=[{"name": "preempt.kconfig", "hash": "aaaaaaaa"}])
    ident = identity.build_identity(state, ["ARCH=x86_64"])
    assert ident["commit"] == "v6.12.3"
    assert ident["fragments"] == [{"name": "preempt.kconfig", "hash": "aaaaaaaa"}]
    assert ident["base_config"] == {"name": "tinyconfig", "hash": None}  # no tree yet
    assert ident["make_vars"] == {"ARCH": "x86_64"}
