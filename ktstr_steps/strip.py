"""Strip a vmlinux to the sections ktstr reads, with objcopy.

ktstr rewrites the ELF with the ``object`` crate: ``.symtab``, ``.strtab``,
``.shstrtab``, ``.BTF``, ``.bss`` and ``.rodata`` keep their bytes;
``.data``, ``.data..percpu``, ``.init.data`` and every executable section keep
only their header (``SHT_NOBITS``) so symbol addresses still resolve to a named
section; everything else, relocations included, is deleted.

objcopy has no "make this one section NOBITS" switch that works on an
executable: ``--set-section-flags .text=alloc`` only changes the flags of an
``ET_EXEC`` and leaves the bytes. ``--only-keep-debug`` is the one mode that
really writes ``SHT_NOBITS`` -- but for *every* allocated section, including
``.rodata`` and (in a real vmlinux) ``.BTF``, whose bytes we must keep. So the
keep-list pass is:

1. ``objcopy --only-keep-debug`` with every section outside the two lists
   removed by name (``-R``), and the kept *allocated* sections temporarily
   marked non-alloc (``--set-section-flags X=contents,readonly``) so objcopy
   copies their bytes;
2. the original ``sh_flags`` of those kept sections written back into the
   output's section headers (one field each; addresses and offsets are already
   right), so ``.rodata``/``.BTF`` look exactly as in the input;
3. the result is checked against the lists (and for named symbols); any
   mismatch fails the pass, which sends the caller to the fallback.

The fallback removes only ``.debug_*``, ``.comment`` and relocation sections by
name. If both fail, :class:`StripError` tells the cache to store the raw file.
"""

from __future__ import annotations

import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ktstr_steps.errors import KtstrError
from ktstr_steps.messages import warn

KEEP_SECTIONS = frozenset({"", ".shstrtab", ".symtab", ".strtab", ".bss", ".rodata", ".BTF"})
NOBITS_SECTIONS = frozenset({".data", ".data..percpu", ".init.data"})
FALLBACK_REMOVE = (".debug_*", ".comment", ".rela.*", ".rel.*", ".relr.*", ".crel.*")

SHT_NOBITS = 8
SHT_REL = 9
SHT_RELA = 4
SHT_RELR = 19
SHT_CREL = 0x40000014
RELOC_TYPES = frozenset({SHT_REL, SHT_RELA, SHT_RELR, SHT_CREL})
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4

# A real vmlinux is a few hundred MB; objcopy needs seconds, not minutes.
OBJCOPY_TIMEOUT = 600


class StripError(KtstrError):
    def __init__(self, message: str) -> None:
        super().__init__(message, kind="vmlinux-strip-failed")


class ElfError(ValueError):
    """The file is not an ELF we can read."""


@dataclass(frozen=True)
class Section:
    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    header_offset: int  # file offset of this section's header


@dataclass(frozen=True)
class ElfInfo:
    is64: bool
    endian: str  # "<" or ">"
    sections: list[Section]

    def by_name(self, name: str) -> list[Section]:
        return [s for s in self.sections if s.name == name]


def read_elf(path: Path) -> tuple[ElfInfo, bytes]:
    """Section headers of an ELF32/ELF64 file of either byte order."""
    data = Path(path).read_bytes()
    if len(data) < 52 or data[:4] != b"\x7fELF":
        raise ElfError(f"{path} is not an ELF file (bad magic)")
    ei_class, ei_data = data[4], data[5]
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        raise ElfError(f"{path}: unknown ELF class/byte order ({ei_class}/{ei_data})")
    is64 = ei_class == 2
    e = "<" if ei_data == 1 else ">"
    try:
        if is64:
            (shoff,) = struct.unpack_from(e + "Q", data, 0x28)
            shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", data, 0x3A)
            shfmt, want_ent = e + "IIQQQQIIQQ", 64
        else:
            (shoff,) = struct.unpack_from(e + "I", data, 0x20)
            shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", data, 0x2E)
            shfmt, want_ent = e + "IIIIIIIIII", 40
        if shoff == 0 or shentsize != want_ent:
            raise ElfError(f"{path}: no usable section header table")
        raw = [struct.unpack_from(shfmt, data, shoff + i * shentsize) for i in range(max(shnum, 1))]
        # Extended numbering: counts that do not fit live in section 0.
        if shnum == 0:
            shnum = raw[0][5]
            raw = [struct.unpack_from(shfmt, data, shoff + i * shentsize) for i in range(shnum)]
        if shstrndx == 0xFFFF:
            shstrndx = raw[0][6]
        strtab_off, strtab_size = raw[shstrndx][4], raw[shstrndx][5]
        names = data[strtab_off : strtab_off + strtab_size]
        sections = []
        for i, h in enumerate(raw):
            name_off = h[0]
            end = names.find(b"\0", name_off)
            if name_off >= len(names) or end < 0:
                raise ElfError(f"{path}: section {i} has a bad name offset")
            sections.append(
                Section(
                    index=i,
                    name=names[name_off:end].decode("utf-8", "replace"),
                    type=h[1],
                    flags=h[2],
                    addr=h[3],
                    offset=h[4],
                    size=h[5],
                    header_offset=shoff + i * shentsize,
                )
            )
    except (struct.error, IndexError) as exc:
        raise ElfError(f"{path}: truncated or inconsistent ELF headers ({exc})") from exc
    return ElfInfo(is64=is64, endian=e, sections=sections), data


def named_symbol_count(path: Path) -> int:
    """Symbols in ``.symtab`` with a non-empty name (ktstr's "named symbols")."""
    info, data = read_elf(path)
    symtabs = info.by_name(".symtab")
    strtabs = info.by_name(".strtab")
    if not symtabs or not strtabs or symtabs[0].type == SHT_NOBITS:
        return 0
    sym, strs = symtabs[0], strtabs[0]
    entsize = 24 if info.is64 else 16
    strdata = data[strs.offset : strs.offset + strs.size]
    count = 0
    for off in range(sym.offset, sym.offset + sym.size, entsize):
        (name_off,) = struct.unpack_from(info.endian + "I", data, off)
        if 0 < name_off < len(strdata) and strdata[name_off] != 0:
            count += 1
    return count


def _objcopy(argv: list[str]) -> None:
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=OBJCOPY_TIMEOUT, check=False
        )
    except FileNotFoundError as exc:
        raise StripError("objcopy not found; install binutils") from exc
    except subprocess.TimeoutExpired as exc:
        raise StripError(f"objcopy timed out after {OBJCOPY_TIMEOUT}s") from exc
    if proc.returncode != 0:
        # objcopy also prints harmless warnings ("empty loadable segment");
        # keep only its error lines so the message stays readable.
        lines = [ln for ln in proc.stderr.splitlines() if "warning:" not in ln]
        detail = "; ".join(lines) or proc.stderr.strip() or f"exit status {proc.returncode}"
        raise StripError(f"objcopy failed: {detail}")


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _wants_nobits(s: Section) -> bool:
    return s.name in NOBITS_SECTIONS or bool(s.flags & SHF_EXECINSTR)


def strip_keep_list(src: Path, dst: Path) -> None:
    """ktstr's keep-list strip (see module doc). Raises on any failure."""
    info, _ = read_elf(src)
    argv = ["objcopy", "--only-keep-debug"]
    restore: dict[str, int] = {}
    removed: set[str] = set()
    for s in info.sections[1:]:
        if s.name in KEEP_SECTIONS and s.type not in RELOC_TYPES:
            if s.flags & SHF_ALLOC and s.type != SHT_NOBITS:
                argv += ["--set-section-flags", f"{s.name}=contents,readonly"]
                restore[s.name] = s.flags
        elif _wants_nobits(s) and s.type not in RELOC_TYPES:
            continue
        elif s.name not in removed:
            removed.add(s.name)
            argv += ["-R", s.name]
    argv += [str(src), str(dst)]
    _objcopy(argv)

    out, _ = read_elf(dst)
    with open(dst, "r+b") as fh:
        fmt = out.endian + ("Q" if out.is64 else "I")
        for s in out.sections:
            if s.name in restore:
                fh.seek(s.header_offset + 8)  # sh_name, sh_type, then sh_flags
                fh.write(struct.pack(fmt, restore[s.name]))

    _check_keep_list(info, dst)


def _check_keep_list(before: ElfInfo, dst: Path) -> None:
    after, _ = read_elf(dst)
    problems = []
    for s in after.sections[1:]:
        if s.type in RELOC_TYPES:
            problems.append(f"relocation section {s.name} survived")
        elif s.name in KEEP_SECTIONS:
            pass
        elif _wants_nobits(s):
            if s.type != SHT_NOBITS:
                problems.append(f"{s.name} kept its bytes")
        else:
            problems.append(f"unexpected section {s.name}")
    for s in before.sections[1:]:
        if s.name in KEEP_SECTIONS and s.type not in RELOC_TYPES and not after.by_name(s.name):
            problems.append(f"{s.name} was lost")
    if problems:
        raise StripError("keep-list strip produced an unexpected layout: " + ", ".join(problems))
    if named_symbol_count(dst) == 0:
        raise StripError("keep-list strip emptied symbol table (0 named symbols)")


def strip_fallback(src: Path, dst: Path) -> None:
    """The weaker strip: drop debug info, .comment and relocation sections by name."""
    argv = ["objcopy", "--wildcard"]
    for pattern in FALLBACK_REMOVE:
        argv += ["-R", pattern]
    _objcopy(argv + [str(src), str(dst)])


def strip_vmlinux(src: Path, dst: Path) -> None:
    """Write a stripped copy of ``src`` to ``dst``; :class:`StripError` when both passes fail.

    ``dst`` does not exist afterwards unless the strip succeeded.
    """
    src, dst = Path(src), Path(dst)
    try:
        strip_keep_list(src, dst)
        return
    except (StripError, ElfError, OSError) as exc:
        first = str(exc)
        _unlink(dst)
    warn(f"keep-list strip failed ({first}), falling back to debug-only strip")
    try:
        strip_fallback(src, dst)
    except (StripError, OSError) as exc:
        _unlink(dst)
        raise StripError(f"keep-list strip: {first}; fallback strip: {exc}") from exc
