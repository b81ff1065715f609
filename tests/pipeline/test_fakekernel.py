"""The fake kernel tree itself: everyone's pipeline tests rely on these behaviours."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

from tests.support.fakekernel import fake_kernel_tarball, git, make_fake_kernel


def make(tree: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-C", str(tree), *args], capture_output=True, text=True, check=check
    )


def config_lines(tree: Path) -> list[str]:
    return (tree / ".config").read_text().splitlines()


def test_git_tree_is_committed_and_clean(tmp_path: Path) -> None:
    tree = make_fake_kernel(tmp_path / "linux")
    assert git(tree, "status", "--porcelain") == ""
    assert len(git(tree, "rev-parse", "HEAD").strip()) == 40


def test_git_without_commit_and_no_git(tmp_path: Path) -> None:
    t1 = make_fake_kernel(tmp_path / "a", commit=False)
    assert (t1 / ".git").is_dir()
    assert "Makefile" in git(t1, "status", "--porcelain")
    t2 = make_fake_kernel(tmp_path / "b", git=False)
    assert not (t2 / ".git").exists()
    assert (t2 / "Kconfig").is_file() and (t2 / "Makefile").is_file()


def test_base_configs_differ_and_arch_decides_64bit(tmp_path: Path) -> None:
    tree = make_fake_kernel(tmp_path / "linux", git=False)
    seen = {}
    for target in ("defconfig", "tinyconfig", "allnoconfig"):
        make(tree, "ARCH=x86_64", target)
        seen[target] = config_lines(tree)
        assert "CONFIG_64BIT=y" in seen[target]
    assert len({tuple(v) for v in seen.values()}) == 3
    assert "CONFIG_CC_OPTIMIZE_FOR_SIZE=y" in seen["tinyconfig"]
    # like a real x86 tree: without ARCH=x86_64, tinyconfig is 32-bit
    make(tree, "tinyconfig")
    assert "# CONFIG_64BIT is not set" in config_lines(tree)


def test_olddefconfig_semantics(tmp_path: Path) -> None:
    tree = make_fake_kernel(tmp_path / "linux", git=False)
    make(tree, "ARCH=x86_64", "defconfig")
    with (tree / ".config").open("a") as f:
        f.write(
            "CONFIG_DEBUG_FS=y\n# CONFIG_DEBUG_FS is not set\n"  # last wins
            "CONFIG_NOT_A_SYMBOL=y\n"  # unknown: dropped
            "CONFIG_KTSTR_FAKE_NEEDS_DEP=y\n"  # unmet dependency
            "CONFIG_KTSTR_FAKE_SLEEP=7\n"
        )
    make(tree, "ARCH=x86_64", "olddefconfig")
    lines = config_lines(tree)
    assert "# CONFIG_DEBUG_FS is not set" in lines
    assert not any("NOT_A_SYMBOL" in x for x in lines)
    assert "# CONFIG_KTSTR_FAKE_NEEDS_DEP is not set" in lines
    assert "CONFIG_KTSTR_FAKE_SLEEP=7" in lines
    assert lines[1] == "# Automatically generated file; DO NOT EDIT."
    assert (tree / ".config.old").exists()
    # one line per symbol: nothing duplicated
    body = [x for x in lines if x.startswith("CONFIG_") or x.endswith("is not set")]
    assert len(body) == len(set(body))


def test_build_produces_elf_vmlinux_with_btf_and_bzimage(tmp_path: Path) -> None:
    tree = make_fake_kernel(tmp_path / "linux", git=False)
    make(tree, "ARCH=x86_64", "defconfig")
    r = make(tree, "-j2", "ARCH=x86_64", "KCFLAGS=-Wno-error")
    assert "  CC      init/main.o" in r.stdout
    vmlinux = tree / "vmlinux"
    assert vmlinux.read_bytes()[:4] == b"\x7fELF"
    sections = subprocess.run(
        ["readelf", "-S", "-W", str(vmlinux)], capture_output=True, text=True, check=True
    ).stdout
    assert ".BTF" in sections and ".symtab" in sections and ".debug_info" in sections
    syms = subprocess.run(["nm", str(vmlinux)], capture_output=True, text=True).stdout
    assert "start_kernel" in syms
    assert (tree / "arch/x86/boot/bzImage").stat().st_size > 0
    cmd = (tree / "init/.main.o.cmd").read_text()
    assert cmd.startswith("savedcmd_init/main.o := gcc ") and "-Wno-error" in cmd


def test_kcflags_change_recompiles_same_flags_do_not(tmp_path: Path) -> None:
    tree = make_fake_kernel(tmp_path / "linux", git=False)
    make(tree, "ARCH=x86_64", "defconfig")
    make(tree, "-j2", "ARCH=x86_64", "KCFLAGS=-Wno-error")
    again = make(tree, "-j2", "ARCH=x86_64", "KCFLAGS=-Wno-error")
    assert "  CC  " not in again.stdout
    changed = make(tree, "-j2", "ARCH=x86_64")
    assert changed.stdout.count("  CC  ") == 5


def test_knobs_warn_break_werror(tmp_path: Path) -> None:
    tree = make_fake_kernel(tmp_path / "linux", git=False)
    make(tree, "ARCH=x86_64", "defconfig")
    with (tree / ".config").open("a") as f:
        f.write("CONFIG_KTSTR_FAKE_WARN=y\nCONFIG_KTSTR_FAKE_WERROR=y\n")
    make(tree, "ARCH=x86_64", "olddefconfig")
    ok = make(tree, "ARCH=x86_64", "KCFLAGS=-Wno-error")
    assert "warning: unused variable" in ok.stderr
    failed = make(tree, "ARCH=x86_64", check=False)  # -Werror wins without KCFLAGS
    assert failed.returncode != 0
    with (tree / ".config").open("a") as f:
        f.write("CONFIG_KTSTR_FAKE_BREAK=y\n")
    make(tree, "ARCH=x86_64", "olddefconfig")
    broken = make(tree, "ARCH=x86_64", "KCFLAGS=-Wno-error", check=False)
    assert broken.returncode == 2
    assert "error: 'ktstr_fake_undeclared_symbol' undeclared" in broken.stderr.replace(
        "\u2018", "'"
    ).replace("\u2019", "'")
    assert "kernel/sched/ext.o] Error 1" in broken.stderr


def test_build_without_config_fails_like_kbuild(tmp_path: Path) -> None:
    tree = make_fake_kernel(tmp_path / "linux", git=False)
    r = make(tree, "ARCH=x86_64", check=False)
    assert r.returncode != 0
    assert 'Configuration file ".config" not found!' in r.stderr


def test_compile_commands_and_mrproper(tmp_path: Path) -> None:
    tree = make_fake_kernel(tmp_path / "linux", git=False)
    make(tree, "ARCH=x86_64", "defconfig")
    make(tree, "ARCH=x86_64", "KCFLAGS=-Wno-error")
    subprocess.run(
        ["python3", "scripts/clang-tools/gen_compile_commands.py", "-d", ".", "-o", "cc.json"],
        cwd=tree,
        check=True,
    )
    entries = json.loads((tree / "cc.json").read_text())
    assert {Path(e["file"]).name for e in entries} == {
        "main.c", "core.c", "ext.c", "string.c", "head64.c"
    }
    assert all(e["directory"] == str(tree) for e in entries)
    make(tree, "mrproper")
    for gone in (".config", "vmlinux", "init/main.o", "init/.main.o.cmd", "include/generated"):
        assert not (tree / gone).exists(), gone
    assert (tree / "init/main.c").exists()


def test_tarball_has_linux_version_prefix(tmp_path: Path) -> None:
    tree = make_fake_kernel(tmp_path / "linux")
    data = fake_kernel_tarball(tree, "6.12.3")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:xz") as tar:
        names = tar.getnames()
    assert "linux-6.12.3/Makefile" in names and "linux-6.12.3/Kconfig" in names
    assert not any("/.git/" in n for n in names)
