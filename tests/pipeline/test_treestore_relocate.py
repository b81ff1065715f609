"""A seeded tree's build records name the copy: tools/ records with absolute paths rewritten.

kbuild builds objtool and resolve_btfids with absolute paths in their ``.cmd``
records; a copy that still names its seed rebuilds objtool and then every object
objtool checks (the real-kernel service test measures that end to end).
"""

from __future__ import annotations

import os
from pathlib import Path

from ktstr_steps.treestore.relocate import relocate_build_records


def record(old: Path) -> str:
    return (f"cmd_{old}/tools/objtool/check.o := gcc -I{old}/tools/include -c -o "
            f"{old}/tools/objtool/check.o {old}/tools/objtool/check.c\n"
            f"deps_{old}/tools/objtool/check.o := \\\n  {old}/tools/objtool/check.c \\\n"
            f"  {old}-other/include/x.h \\\n  /usr/include/stdio.h\n")


def test_records_name_the_new_tree_and_keep_their_times(tmp_path: Path):
    old, new = tmp_path / "trees" / "main", tmp_path / "trees" / "topic"
    cmd = new / "tools" / "objtool" / ".check.o.cmd"
    cmd.parent.mkdir(parents=True)
    cmd.write_text(record(old))
    os.utime(cmd, ns=(1_000_000_000_123, 1_000_000_000_456))
    binary = new / "tools" / "objtool" / "objtool"
    binary.write_bytes(b"\x7fELF" + str(old).encode())  # debug info naming the seed: an output
    plain = new / "kernel" / ".fork.o.cmd"  # kbuild's own records are relative: left alone
    plain.parent.mkdir(parents=True)
    plain.write_text("cmd_kernel/fork.o := gcc -c -o kernel/fork.o kernel/fork.c\n")
    before = plain.stat().st_mtime_ns

    assert relocate_build_records(new, old) == 1

    assert cmd.read_text() == record(new).replace(f"{new}-other", f"{old}-other")
    assert cmd.stat().st_mtime_ns == 1_000_000_000_456
    assert str(old).encode() in binary.read_bytes()
    assert plain.stat().st_mtime_ns == before
    assert relocate_build_records(new, old) == 0  # nothing left naming the seed


def test_a_record_shared_with_the_seed_is_replaced_not_written_through(tmp_path: Path):
    old, new = tmp_path / "main", tmp_path / "topic"
    (old / "tools").mkdir(parents=True)
    (new / "tools").mkdir(parents=True)
    seed_cmd = old / "tools" / ".x.o.cmd"
    seed_cmd.write_text(record(old))
    os.link(seed_cmd, new / "tools" / ".x.o.cmd")

    assert relocate_build_records(new, old) == 1

    assert seed_cmd.read_text() == record(old)
    assert str(new) in (new / "tools" / ".x.o.cmd").read_text()


def test_paths_are_compared_as_make_sees_them_through_symlinks(tmp_path: Path):
    real_old, real_new = tmp_path / "disk" / "main", tmp_path / "disk" / "topic"
    (real_new / "tools").mkdir(parents=True)
    real_old.mkdir()
    (tmp_path / "store").symlink_to(tmp_path / "disk")
    (real_new / "tools" / ".x.o.cmd").write_text(record(real_old))

    assert relocate_build_records(tmp_path / "store" / "topic", tmp_path / "store" / "main") == 1

    assert (real_new / "tools" / ".x.o.cmd").read_text() == \
        record(real_new).replace(f"{real_new}-other", f"{real_old}-other")
