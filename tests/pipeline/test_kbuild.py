"""kbuild.py (the kernel make runner) on the fake tree: real make, gcc and process groups."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ktstr_steps import kbuild as mk
from ktstr_steps import kconfig as kc
from ktstr_steps.errors import KtstrError
from ktstr_steps.messages import Progress
from tests.support.fakekernel import make_fake_kernel

MV = mk.make_vars("x86_64")
REPO = Path(__file__).resolve().parents[2]


def configured(tmp_path: Path, extra: str | None = None) -> Path:
    tree = make_fake_kernel(tmp_path / "linux", git=False)
    kc.configure_kernel(tree, kc.merge_fragments(kc.baked_fragment(), extra), make_vars=MV)
    return tree


def objects(tree: Path) -> dict[str, int]:
    return {str(p.relative_to(tree)): p.stat().st_mtime_ns for p in tree.rglob("*.o")}


def test_make_vars_and_parallelism() -> None:
    assert mk.make_vars("x86_64") == ["ARCH=x86_64", "KCFLAGS=-Wno-error"]
    assert mk.make_vars("aarch64")[0] == "ARCH=arm64"
    with pytest.raises(KtstrError, match="unsupported architecture 'riscv64'"):
        mk.make_vars("riscv64")
    assert mk.available_parallelism() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("init/main.c:9:13: warning: unused variable 'x' [-Wunused-variable]", "warning"),
        ("kernel/sched/ext.c:4:18: error: 'y' undeclared here (not in a function)", "error"),
        ("include/linux/foo.h:3:10: fatal error: bar.h: No such file or directory", "error"),
        ("cc1: warning: command-line option '-Wfoo' is valid for C++", "warning"),
        ("arch/x86/entry/entry_64.S:12: Warning: no instruction mnemonic suffix given", "warning"),
        ("arch/x86/entry/entry_64.S:40: Error: no such instruction: `movz %eax'", "error"),
        ("{standard input}:1234: Warning: end of file not at end of a line", "warning"),
        ("ld: warning: arch/x86/boot/compressed/vmlinux has a LOAD segment with RWX", "warning"),
        ("ld: warning: creating DT_TEXTREL in a PIE", "warning"),
        ("/usr/bin/ld: warning: x.o: missing .note.GNU-stack section", "warning"),
        ("main.c:(.text+0x5): undefined reference to `foo'", "error"),
        ("collect2: error: ld returned 1 exit status", "error"),
        ("WARNING: modpost: vmlinux: section mismatch in reference: foo+0x0 (section: .text)", "warning"),
        ("ERROR: modpost: \"foo\" [drivers/x.ko] undefined!", "error"),
        ("vmlinux.o: warning: objtool: foo+0x12: call to bar() leaves .noinstr.text section", "warning"),
        ("vmlinux.o: error: objtool: foo: unexpected end of section", "error"),
        ("Makefile:12: warning: overriding recipe for target 'x'", None),
        (".config:1950:warning: override: reassigning to symbol FB", None),
        ("  CC      kernel/sched/core.o", None),
        ("make[2]: *** [scripts/Makefile.build:229: kernel/sched/ext.o] Error 1", None),
    ],
)
def test_classify_line(line: str, kind: str | None) -> None:
    assert mk.classify_line(line) == kind


def test_failed_target_shapes() -> None:
    assert mk.failed_target("make[4]: *** [scripts/Makefile.build:229: kernel/sched/ext.o] Error 1") == "kernel/sched/ext.o"
    assert mk.failed_target("make: *** [Makefile:12: foo.o] Error 1") == "foo.o"
    assert mk.failed_target("make: *** [vmlinux] Killed") == "vmlinux"
    assert mk.failed_target("make: *** No rule to make target 'x.c', needed by 'x.o'.  Stop.") == "x.c"
    assert mk.failed_target("make[1]: *** Waiting for unfinished jobs....") is None


def test_streamed_build_counts_warnings_and_reports_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tree = configured(tmp_path, "CONFIG_KTSTR_FAKE_WARN=y\nCONFIG_KTSTR_FAKE_WERROR=y\n")
    seen: list[str] = []
    stream = io.StringIO()
    res = mk.run_make_streamed(
        tree, jobs=2, make_vars=MV, on_line=seen.append,
        progress=Progress("make", interval=0.0, stream=stream),
    )
    assert res.returncode == 0 and res.failed_target is None
    # -Werror from the tree is undone by KCFLAGS=-Wno-error: it builds, the warning is counted
    assert res.warnings == 1 and res.errors == 0
    assert res.lines == len(seen) and any("unused variable" in s for s in seen)
    assert res.log_path is None  # own temp log removed after success
    err = capsys.readouterr().err
    assert "  CC      init/main.o" in err  # streamed live to stderr
    progress = stream.getvalue().splitlines()
    assert any(p.startswith("ktstr-ci: progress: make: ") and "CC" in p for p in progress)
    assert "ktstr-ci: make: " in stream.getvalue()
    assert (tree / "vmlinux").is_file()
    assert mk.find_image(tree, "x86_64") == tree / "arch/x86/boot/bzImage"


def test_streamed_build_failure_names_target_and_keeps_log(tmp_path: Path) -> None:
    tree = configured(tmp_path, "CONFIG_KTSTR_FAKE_BREAK=y\n")
    log = tmp_path / "logs" / "make.log"
    with pytest.raises(mk.MakeFailed) as ei:
        mk.run_make_streamed(tree, jobs=1, make_vars=MV, log_path=log)
    e = ei.value
    assert e.kind == "make-failed"
    assert e.result.failed_target == "kernel/sched/ext.o"
    assert e.result.errors == 1 and e.result.returncode == 2
    msg = str(e)
    assert msg.startswith("make -j1 ARCH=x86_64 KCFLAGS=-Wno-error failed")
    assert "failed target: kernel/sched/ext.o" in msg
    assert "ktstr_fake_undeclared_symbol" in msg
    assert f"full log: {log}" in msg
    text = log.read_text()
    assert "kernel/sched/ext.o] Error 1" in text and "  CC      init/main.o" in text


def test_streamed_failure_with_own_log_keeps_it(tmp_path: Path) -> None:
    tree = make_fake_kernel(tmp_path / "linux", git=False)  # no .config at all
    with pytest.raises(mk.MakeFailed) as ei:
        mk.run_make_streamed(tree, jobs=1, make_vars=MV)
    log = ei.value.result.log_path
    try:
        assert log is not None and log.is_file()
        assert 'Configuration file ".config" not found!' in log.read_text()
        assert ei.value.result.failed_target == ".config"
    finally:
        if log:
            log.unlink()


def test_lossy_decode_and_carriage_returns(tmp_path: Path) -> None:
    d = tmp_path / "t"
    d.mkdir()
    (d / "Makefile").write_text(
        "all:\n\t@printf 'caf\\351\\r\\na\\rb\\nlast-no-newline'\n"
    )
    seen: list[str] = []
    mk.run_make_streamed(d, jobs=1, make_vars=[], on_line=seen.append)
    assert seen == ["caf\ufffd", "a\rb", "last-no-newline"]


def test_run_make_mrproper_and_failure(tmp_path: Path) -> None:
    tree = configured(tmp_path)
    mk.run_make_streamed(tree, jobs=2, make_vars=MV)
    mk.run_make(tree, ["mrproper"], make_vars=MV)
    assert not (tree / ".config").exists() and not (tree / "vmlinux").exists()
    assert not list(tree.rglob("*.o"))
    with pytest.raises(KtstrError) as ei:
        mk.run_make(tree, ["nonsense-target"], make_vars=MV)
    assert ei.value.kind == "make-failed"
    assert "make nonsense-target ARCH=x86_64 KCFLAGS=-Wno-error failed" in str(ei.value)


def _sleepers(tree: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "^sleep 30$"], capture_output=True, text=True).stdout
    # only sleeps whose cwd is our tree, not someone else's
    pids = []
    for pid in out.split():
        try:
            if os.readlink(f"/proc/{pid}/cwd") == str(tree):
                pids.append(int(pid))
        except OSError:
            pass
    return pids


def test_run_make_timeout_kills_the_group(tmp_path: Path) -> None:
    tree = configured(tmp_path, "CONFIG_KTSTR_FAKE_SLEEP=30\n")
    mk.run_make(tree, ["include/config/auto.conf"], make_vars=MV)
    start = time.monotonic()
    with pytest.raises(KtstrError) as ei:
        mk.run_make(tree, ["-f", "scripts/Makefile.build", "slowpoke"], make_vars=MV, timeout=1.0)
    assert ei.value.kind == "make-timeout"
    assert "timed out after 1s; child killed" in str(ei.value)
    assert time.monotonic() - start < 25  # nowhere near the sleep's 30 s
    assert _sleepers(tree) == []


def test_streamed_timeout_kills_sleep_child(tmp_path: Path) -> None:
    tree = configured(tmp_path, "CONFIG_KTSTR_FAKE_SLEEP=30\n")
    with pytest.raises(mk.MakeFailed, match="timed out after 2s; child killed"):
        mk.run_make_streamed(tree, jobs=2, make_vars=MV, timeout=2.0)
    assert _sleepers(tree) == []


def test_sigterm_kills_make_group_and_exits(tmp_path: Path) -> None:
    tree = configured(tmp_path, "CONFIG_KTSTR_FAKE_SLEEP=30\n")
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from ktstr_steps import kbuild as mk
        try:
            mk.run_make_streamed({str(tree)!r}, jobs=2, make_vars=mk.make_vars("x86_64"))
        finally:
            print("finally-ran", flush=True)
        """
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not _sleepers(tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sleepers(tree), "the build never reached the sleep"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 128 + signal.SIGTERM
    assert "finally-ran" in out
    assert _sleepers(tree) == []


def test_generate_compile_commands_without_recompiling(tmp_path: Path) -> None:
    tree = configured(tmp_path)
    mk.run_make_streamed(tree, jobs=2, make_vars=MV)
    before = objects(tree)
    vmlinux = (tree / "vmlinux").stat().st_mtime_ns
    out = mk.generate_compile_commands(tree, MV)
    assert out == tree / "compile_commands.json"
    entries = json.loads(out.read_text())
    assert len(entries) == 5 and all("-Wno-error" in e["command"] for e in entries)
    assert objects(tree) == before and (tree / "vmlinux").stat().st_mtime_ns == vmlinux


def test_compile_commands_make_fallback_same_vars_no_rebuild(tmp_path: Path) -> None:
    tree = configured(tmp_path)
    mk.run_make_streamed(tree, jobs=2, make_vars=MV)
    before = objects(tree)
    (tree / "scripts/clang-tools/gen_compile_commands.py").rename(tree / "gen.py.off")
    (tree / "gen.py.off").rename(tree / "scripts/gen.py")
    # the fallback target in the tree calls the script; give make a copy it can run
    mk_rule = tree / "Makefile"
    mk_rule.write_text(mk_rule.read_text().replace(
        "scripts/clang-tools/gen_compile_commands.py", "scripts/gen.py"))
    out = mk.generate_compile_commands(tree, MV)
    assert len(json.loads(out.read_text())) == 5
    assert objects(tree) == before  # same KCFLAGS as the build: nothing recompiled


def test_compile_commands_failure_message(tmp_path: Path) -> None:
    tree = make_fake_kernel(tmp_path / "linux", git=False)
    (tree / "scripts/clang-tools/gen_compile_commands.py").unlink()
    with pytest.raises(KtstrError) as ei:
        mk.generate_compile_commands(tree, MV)  # no .config: make fails too
    assert ei.value.kind == "compile-commands"
    assert str(ei.value).startswith("make compile_commands.json failed")
    assert not (tree / "compile_commands.json").exists()


def test_find_image_and_vmlinux_message(tmp_path: Path) -> None:
    with pytest.raises(KtstrError, match=f"no kernel image found in {tmp_path}$"):
        mk.find_image(tmp_path, "x86_64")
    (tmp_path / "Image").write_bytes(b"x")
    assert mk.find_image(tmp_path, "x86_64") == tmp_path / "Image"
    assert mk.vmlinux_message(tmp_path) == "warning: vmlinux not found, BTF will not be cached"
    (tmp_path / "vmlinux").write_bytes(b"\0" * (3 * 1024 * 1024 + 1))
    assert mk.vmlinux_message(tmp_path) == "caching vmlinux (3 MB, will be stripped)"


def test_bad_jobs(tmp_path: Path) -> None:
    with pytest.raises(KtstrError, match="at least 1 job"):
        mk.run_make_streamed(tmp_path, jobs=0, make_vars=MV)


def test_a_parent_makes_flags_do_not_leak_into_the_build(tmp_path: Path, monkeypatch) -> None:
    # As under `make test` / `make run`: the outer make exports these.
    monkeypatch.setenv("MAKELEVEL", "1")
    monkeypatch.setenv("MAKEFLAGS", "w -j7 --jobserver-auth=fifo:/nonexistent KEEP=parent")
    d = tmp_path / "t"
    d.mkdir()
    (d / "Makefile").write_text("all:\n\t@echo level=$(MAKELEVEL) keep=$(KEEP)\n")
    seen: list[str] = []
    mk.run_make_streamed(d, jobs=1, make_vars=[], on_line=seen.append)
    assert seen == ["level=0 keep="]
