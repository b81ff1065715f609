"""kconfig.py against the fake tree: real make, real olddefconfig semantics."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from ktstr_steps import kconfig as kc
from ktstr_steps.errors import KtstrError
from ktstr_steps.kbuild import make_vars
from tests.support.fakekernel import make_fake_kernel

MV = make_vars("x86_64")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_fake_kernel(tmp_path / "linux", git=False)


def lines(tree: Path) -> list[str]:
    return (tree / ".config").read_text().splitlines()


# --- baked fragment, hashes, merge ---------------------------------------


def test_baked_fragment_and_hash() -> None:
    text = kc.baked_fragment()
    assert "CONFIG_SCHED_CLASS_EXT=y" in text
    assert kc.kconfig_hash() == f"{zlib.crc32(text.encode()) & 0xFFFFFFFF:08x}"
    assert kc.extra_kconfig_hash(None) is None
    assert kc.extra_kconfig_hash("CONFIG_X=y\n") == f"{zlib.crc32(b'CONFIG_X=y' + bytes([10])):08x}"


def test_merge_fragments() -> None:
    assert kc.merge_fragments("A", None) == "A"
    assert kc.merge_fragments("A", "B") == "A\nB"
    assert kc.merge_fragments("A", "") == "A\n"


def test_critical_options_are_enabled_in_baked_fragment() -> None:
    sem = set(kc.semantic_lines(kc.baked_fragment()))
    for opt, _hint in kc.CRITICAL_OPTIONS:
        assert f"{opt}=y" in sem
    assert [o for o, _ in kc.CRITICAL_OPTIONS] == [
        "CONFIG_SCHED_CLASS_EXT", "CONFIG_DEBUG_INFO_BTF", "CONFIG_BPF_SYSCALL",
        "CONFIG_FTRACE", "CONFIG_KPROBE_EVENTS", "CONFIG_BPF_EVENTS",
    ]


def test_semantic_lines_ignore_comments() -> None:
    frag = "# header\n\nCONFIG_A=y\n  # CONFIG_B is not set  \n# CONFIG_C=y\n# free text\n"
    assert kc.semantic_lines(frag) == ["CONFIG_A=y", "# CONFIG_B is not set"]


# --- parse / load ----------------------------------------------------------


def test_parse_fragment_accepts_kbuild_lines() -> None:
    text = (
        'CONFIG_A=y\nCONFIG_B=m\nCONFIG_C=n\nCONFIG_D=42\nCONFIG_E=0x1f\nCONFIG_F="a b"\n'
        "# CONFIG_G is not set\n# CONFIG_H=y (opt-in)\n\n"
    )
    assert len(kc.parse_fragment(text, "f")) == 7


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("SCHED_CLASS_EXT=y", "must start with CONFIG_"),
        ("CONFIG_A", "missing =value"),
        ("CONFIG_A=", "empty value"),
        ("CONFIG_A=yes please", "invalid value"),
        ("#CONFIG_A is not set", "spell it exactly"),
        ("enable sched_ext", "not a kconfig line"),
    ],
)
def test_parse_fragment_rejects_malformed(bad: str, why: str) -> None:
    with pytest.raises(KtstrError) as ei:
        kc.parse_fragment(f"CONFIG_OK=y\n# fine\n{bad}\n", "extra.kconfig")
    msg = str(ei.value)
    assert ei.value.kind == "bad-kconfig"
    assert msg.startswith("extra.kconfig:3: ")
    assert repr(bad) in msg and why in msg
    assert "CONFIG_NAME=value" in msg


def test_load_extra_kconfig_errors(tmp_path: Path) -> None:
    with pytest.raises(KtstrError, match="no such file"):
        kc.load_extra_kconfig(tmp_path / "nope")
    with pytest.raises(KtstrError, match="is a directory"):
        kc.load_extra_kconfig(tmp_path)
    latin = tmp_path / "latin1.kconfig"
    latin.write_bytes(b"CONFIG_A=y\n# caf\xe9\n")
    with pytest.raises(KtstrError, match=r"not UTF-8 \(invalid byte 0xe9 at offset 16\)"):
        kc.load_extra_kconfig(latin)
    bad = tmp_path / "bad.kconfig"
    bad.write_text("CONFIG_A=y\nCONFIG_B\n")
    with pytest.raises(KtstrError, match=r"bad.kconfig:2: malformed"):
        kc.load_extra_kconfig(bad)


def test_load_extra_kconfig_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "x.kconfig"
    f.write_text("CONFIG_A=y\n")
    # root ignores file modes, so make the read itself fail the way EACCES does
    real = Path.read_bytes

    def deny(self: Path) -> bytes:
        if self == f:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(KtstrError, match="permission denied; make the file readable"):
        kc.load_extra_kconfig(f)


def test_load_extra_kconfig_empty_warns(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    f = tmp_path / "empty.kconfig"
    f.write_text("")
    assert kc.load_extra_kconfig(f) == ""
    assert "ktstr-ci: warning: --extra-kconfig" in capsys.readouterr().err


# --- profiles --------------------------------------------------------------


def test_load_profile() -> None:
    p = kc.load_profile("tiny-preempt")
    assert p.base == "tinyconfig"
    assert "CONFIG_PREEMPT=y" in (p.extra_text or "")
    assert [f.name for f in p.extra_files] == ["preempt.kconfig"]
    assert kc.load_profile("default").extra_text is None


def test_unknown_profile_lists_known() -> None:
    with pytest.raises(KtstrError) as ei:
        kc.load_profile("huge")
    assert ei.value.kind == "bad-profile"
    assert "unknown config profile 'huge'" in str(ei.value)
    assert "default, preempt, tiny, tiny-preempt" in str(ei.value)


# --- has_sched_ext ---------------------------------------------------------


def test_has_sched_ext_exact_line(tmp_path: Path) -> None:
    cfg = tmp_path / ".config"
    assert not kc.has_sched_ext(tmp_path)
    cfg.write_text("CONFIG_A=y\nCONFIG_SCHED_CLASS_EXT=y\n")
    assert kc.has_sched_ext(tmp_path)
    cfg.write_text("CONFIG_SCHED_CLASS_EXT=y \n")
    assert not kc.has_sched_ext(tmp_path)
    cfg.write_bytes(b"CONFIG_SCHED_CLASS_EXT=y\r\n")
    assert not kc.has_sched_ext(tmp_path)


# --- configure -------------------------------------------------------------


@pytest.mark.parametrize("base", ["defconfig", "tinyconfig", "allnoconfig"])
def test_configure_from_each_base(tree: Path, base: str) -> None:
    assert kc.configure_kernel(tree, kc.baked_fragment(), base_config=base, make_vars=MV)
    got = lines(tree)
    # ARCH=x86_64 in make_vars: 64-bit even from tinyconfig/allnoconfig
    assert "CONFIG_64BIT=y" in got
    assert "CONFIG_SCHED_CLASS_EXT=y" in got
    assert kc.validate_kernel_config(tree) == []
    assert kc.has_sched_ext(tree)
    if base == "tinyconfig":
        assert "CONFIG_CC_OPTIMIZE_FOR_SIZE=y" in got


def test_configure_from_config_file(tree: Path, tmp_path: Path) -> None:
    base = tmp_path / "my.config"
    base.write_text("CONFIG_SMP=y\nCONFIG_IKCONFIG=y\n")
    kc.configure_kernel(tree, kc.baked_fragment(), base_config=str(base), make_vars=MV)
    assert "CONFIG_IKCONFIG_PROC=y" in lines(tree)


def test_bad_base_config_leaves_nothing(tree: Path) -> None:
    with pytest.raises(KtstrError) as ei:
        kc.configure_kernel(tree, "", base_config="hugeconfig", make_vars=MV)
    assert ei.value.kind == "bad-base-config"
    assert "defconfig, tinyconfig, allnoconfig" in str(ei.value)
    assert not (tree / ".config").exists()


def test_second_configure_is_a_noop(tree: Path) -> None:
    frag = kc.merge_fragments(kc.baked_fragment(), "CONFIG_KPROBES=y\n# CONFIG_DEBUG_FS is not set\n")
    assert kc.configure_kernel(tree, frag, make_vars=MV)
    cfg = tree / ".config"
    old = cfg.stat().st_mtime_ns
    os.utime(cfg, ns=(old - 10**9, old - 10**9))  # so a rewrite would show
    stamp, ino = cfg.stat().st_mtime_ns, cfg.stat().st_ino
    # baked "DEBUG_FS=y" then user "not set": the probe honours last-wins
    assert kc.configure_kernel(tree, frag, make_vars=MV) is False
    assert (cfg.stat().st_mtime_ns, cfg.stat().st_ino) == (stamp, ino)  # not even rewritten
    # force re-runs olddefconfig (it writes a new file), but an identical
    # result keeps the old mtime so kbuild sees nothing new
    assert kc.configure_kernel(tree, frag, make_vars=MV, force=True) is False
    assert cfg.stat().st_ino != ino
    assert cfg.stat().st_mtime_ns == stamp


def test_configure_keeps_existing_config_base(tree: Path) -> None:
    (tree / ".config").write_text("CONFIG_SMP=y\nCONFIG_KTSTR_FAKE_SLEEP=3")  # no final newline
    kc.configure_kernel(tree, kc.baked_fragment(), base_config="tinyconfig", make_vars=MV)
    got = lines(tree)
    assert "CONFIG_KTSTR_FAKE_SLEEP=3" in got  # not glued to the fragment's first line
    assert "CONFIG_CC_OPTIMIZE_FOR_SIZE=y" not in got  # tinyconfig did not run


def test_configure_failure_restores_config(tree: Path) -> None:
    (tree / ".config").write_text("CONFIG_SMP=y\n")
    with pytest.raises(KtstrError) as ei:
        # an arch the tree does not have makes the real olddefconfig fail
        kc.configure_kernel(tree, kc.baked_fragment(), make_vars=["ARCH=arm64"])
    assert ei.value.kind == "configure-failed"
    assert "make olddefconfig ARCH=arm64 failed" in str(ei.value)
    assert (tree / ".config").read_text() == "CONFIG_SMP=y\n"


# --- override / dropped -----------------------------------------------------


def test_overrides() -> None:
    baked = "# c\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n"
    extra = "CONFIG_A=y\n# CONFIG_A is not set\nCONFIG_B=y\nCONFIG_NEW=y\n# CONFIG_C=n comment\n"
    got = kc.overrides(baked, extra)
    assert got == [
        kc.Override("CONFIG_A", "=y", "is not set"),
        kc.Override("CONFIG_B", "is not set", "=y"),
    ]
    assert kc.format_override(got[0]) == (
        "--extra-kconfig overrides baked-in CONFIG_A (was =y, now is not set)"
    )


def test_dropped_line_after_unmet_dependency(tree: Path) -> None:
    extra = (
        "CONFIG_KTSTR_FAKE_NEEDS_DEP=y\n"  # depends on KTSTR_FAKE_DEP (off)
        "CONFIG_NO_SUCH_SYMBOL=y\n"
        "CONFIG_KPROBES=y\n"  # survives
        "CONFIG_PSI=n\n"  # = "# CONFIG_PSI is not set": survives
    )
    kc.configure_kernel(tree, kc.merge_fragments(kc.baked_fragment(), extra), make_vars=MV)
    got = kc.dropped_lines(tree, extra)
    assert got == [
        kc.Dropped("CONFIG_KTSTR_FAKE_NEEDS_DEP=y", "# CONFIG_KTSTR_FAKE_NEEDS_DEP is not set"),
        kc.Dropped("CONFIG_NO_SUCH_SYMBOL=y", kc.ABSENT),
    ]
    msg = kc.format_dropped(got[0])
    assert "did not survive `make olddefconfig`" in msg
    assert 'requested="CONFIG_KTSTR_FAKE_NEEDS_DEP=y"' in msg
    assert 'final_state="# CONFIG_KTSTR_FAKE_NEEDS_DEP is not set"' in msg
    assert kc.dropped_lines(tree / "nowhere", extra) == []


def test_extra_disabling_btf_drops_sched_ext_and_fails_validation(tree: Path) -> None:
    extra = "# CONFIG_DEBUG_INFO_BTF is not set\n# CONFIG_KPROBES is not set\n"
    kc.configure_kernel(tree, kc.merge_fragments(kc.baked_fragment(), extra), make_vars=MV)
    missing = kc.validate_kernel_config(tree)
    assert [m.option for m in missing] == [
        "CONFIG_SCHED_CLASS_EXT", "CONFIG_DEBUG_INFO_BTF", "CONFIG_KPROBE_EVENTS",
        "CONFIG_BPF_EVENTS",
    ]
    msg = kc.format_validation_error(missing)
    assert msg.startswith("kernel build completed but critical config options are missing:\n")
    assert "  CONFIG_DEBUG_INFO_BTF not set — requires pahole >= 1.16 (dwarves package)\n" in msg
    assert msg.endswith("Install missing tools and rebuild with --force.")


def test_validate_trims_and_reports_unreadable(tmp_path: Path) -> None:
    body = "".join(f"  {o}=y \n" for o, _ in kc.CRITICAL_OPTIONS)
    (tmp_path / ".config").write_text(body)
    assert kc.validate_kernel_config(tmp_path) == []
    with pytest.raises(KtstrError) as ei:
        kc.validate_kernel_config(tmp_path / "missing")
    assert ei.value.kind == "validation"
    assert f"read {tmp_path / 'missing' / '.config'}" in str(ei.value)


def test_configure_shows_progress_for_each_make_target(tmp_path: Path, capfd) -> None:
    tree = make_fake_kernel(tmp_path / "linux")
    kc.configure_kernel(tree, kc.baked_fragment(), base_config="tinyconfig", make_vars=MV)
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("ktstr-ci: progress: configure: ")]
    assert lines[0] == "ktstr-ci: progress: configure: make tinyconfig"
    assert lines[-1].endswith("make olddefconfig")
