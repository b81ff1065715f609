"""vmlinux stripping on a real gcc-built ELF, checked with readelf."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ktstr_steps.strip import StripError, named_symbol_count, strip_vmlinux
from tests.support.vmlinux import build_vmlinux, sections


def symbols(path: Path) -> dict[str, int]:
    out = subprocess.run(
        ["readelf", "-sW", str(path)], check=True, capture_output=True, text=True
    ).stdout
    syms = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) == 8 and f[0][:-1].isdigit() and f[0].endswith(":"):
            syms[f[7]] = int(f[1], 16)
    return syms


def section_bytes(path: Path, name: str) -> bytes:
    tmp = path.parent / f"dump{name}.bin"
    subprocess.run(
        ["objcopy", f"--dump-section={name}={tmp}", str(path), str(path.parent / "dump.junk")],
        check=True,
        capture_output=True,
    )
    return tmp.read_bytes()


@pytest.fixture(scope="module")
def vmlinux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_vmlinux(tmp_path_factory.mktemp("vmlinux") / "vmlinux")


def test_fixture_is_a_realistic_vmlinux(vmlinux: Path) -> None:
    # Guards the test itself: if the toolchain stops producing these, the
    # strip tests below would pass for the wrong reason.
    s = sections(vmlinux)
    for name in (".text", ".rodata", ".BTF", ".data", ".init.data", ".data..percpu", ".symtab"):
        assert s[name]["type"] != "NOBITS" and s[name]["size"] > 0, name
    assert "A" in s[".BTF"]["flags"]
    assert any(n.startswith(".debug_") for n in s)
    assert any(n.startswith(".rela.") for n in s)


def test_keep_list_strip(vmlinux: Path, tmp_path: Path) -> None:
    out = tmp_path / "vmlinux"
    strip_vmlinux(vmlinux, out)
    before, after = sections(vmlinux), sections(out)

    # Kept with their bytes and their original header (incl. the alloc flag).
    for name in (".BTF", ".rodata"):
        assert after[name]["type"] == before[name]["type"], name
        assert after[name]["size"] == before[name]["size"] > 0, name
        assert after[name]["flags"] == before[name]["flags"], name
        assert after[name]["addr"] == before[name]["addr"], name
    # objcopy drops the symbols of deleted sections, so the tables shrink.
    for name in (".symtab", ".strtab"):
        assert after[name]["type"] == before[name]["type"], name
        assert after[name]["size"] > 0, name
    assert section_bytes(out, ".BTF") == section_bytes(vmlinux, ".BTF")
    assert b"IKCFG_ST CONFIG_SCHED_CLASS_EXT=y IKCFG_ED" in section_bytes(out, ".rodata")
    assert after[".bss"]["type"] == "NOBITS"

    # Header kept, bytes dropped.
    for name in (".text", ".data", ".init.data", ".data..percpu"):
        assert after[name]["type"] == "NOBITS", name
        assert after[name]["addr"] == before[name]["addr"], name

    # Everything else is gone.
    assert set(after) == {
        ".text", ".rodata", ".BTF", ".data", ".init.data", ".data..percpu", ".bss",
        ".symtab", ".strtab", ".shstrtab",
    }  # fmt: skip
    assert out.stat().st_size < vmlinux.stat().st_size

    # Symbols still resolve to the same addresses.
    sb, sa = symbols(vmlinux), symbols(out)
    for name in ("startup_64", "helper", "kernel_config_data", "btf_blob", "percpu_var"):
        assert sa[name] == sb[name], name
    assert named_symbol_count(out) >= 5


def test_fallback_when_keep_list_fails(
    vmlinux: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # No symbol table at all: the keep-list pass must refuse (ktstr: "0 named
    # symbols"); the fallback still removes debug info, .comment and relocations.
    nosyms = tmp_path / "nosyms"
    subprocess.run(["objcopy", "--strip-all", str(vmlinux), str(nosyms)], check=True)
    blob = tmp_path / "blob"
    blob.write_bytes(b"x" * 4096)
    subprocess.run(
        [
            "objcopy",
            f"--add-section=.debug_info={blob}",
            f"--add-section=.relr.fake={blob}",
            str(nosyms),
        ],
        check=True,
        capture_output=True,
    )
    # (--strip-all keeps .comment, so it is already there.)
    assert {".debug_info", ".comment", ".relr.fake"} <= set(sections(nosyms))
    out = tmp_path / "out"
    strip_vmlinux(nosyms, out)
    after = sections(out)
    assert not {".debug_info", ".comment", ".relr.fake"} & set(after)
    assert after[".text"]["type"] == "PROGBITS"  # the fallback does not touch code
    assert after[".BTF"]["size"] > 0
    assert "keep-list strip failed" in capfd.readouterr().err


def test_non_elf_fails_both_and_leaves_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "vmlinux"
    src.write_text("this is not an ELF file\n")
    dst = tmp_path / "out"
    with pytest.raises(StripError) as info:
        strip_vmlinux(src, dst)
    msg = str(info.value)
    assert "keep-list strip:" in msg and "not an ELF" in msg
    assert "fallback strip:" in msg and "objcopy" in msg
    assert info.value.kind == "vmlinux-strip-failed"
    assert not dst.exists()
    assert "falling back" in capfd.readouterr().err


def test_truncated_elf_fails_cleanly(vmlinux: Path, tmp_path: Path) -> None:
    src = tmp_path / "vmlinux"
    src.write_bytes(vmlinux.read_bytes()[:200])
    with pytest.raises(StripError):
        strip_vmlinux(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_objcopy_missing_is_a_strip_error(
    vmlinux: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert shutil.which("objcopy") is None
    with pytest.raises(StripError, match="objcopy not found"):
        strip_vmlinux(vmlinux, tmp_path / "out")
    assert not (tmp_path / "out").exists()
