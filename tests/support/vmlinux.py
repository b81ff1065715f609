"""A miniature vmlinux compiled with gcc, and readelf's view of its sections."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

# A vmlinux in miniature: code, .rodata with an IKCONFIG-like blob, an
# allocated .BTF (as in a real vmlinux, where the linker script maps it),
# the three data sections ktstr turns into NOBITS, a .bss, DWARF, and
# relocation sections (--emit-relocs, as CONFIG_RELOCATABLE links vmlinux).
VMLINUX_C = r"""
int counter = 5;
__attribute__((section(".data..percpu"))) int percpu_var = 7;
__attribute__((section(".init.data"))) int init_var = 9;
__attribute__((section(".BTF"), used)) const unsigned char btf_blob[25] = {
    0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0};
const char kernel_config_data[] = "IKCFG_ST CONFIG_SCHED_CLASS_EXT=y IKCFG_ED";
static char bigbuf[4096];
int helper(int x) { return x * 2 + counter + bigbuf[x]; }
void startup_64(void)
{
    bigbuf[3] = 1;
    counter = helper(percpu_var + init_var + kernel_config_data[0] + btf_blob[0]);
    for (;;)
        ;
}
"""


GCC = [
    "gcc", "-O2", "-g", "-ffreestanding", "-fno-pie", "-fno-stack-protector",
    "-static", "-nostdlib", "-no-pie", "-Wl,-e,startup_64", "-Wl,--build-id=none",
    "-Wl,--emit-relocs", "-Wl,--unique=.data..percpu",
]  # fmt: skip


def build_vmlinux(dest: Path) -> Path:
    """Compile the miniature vmlinux into ``dest`` (a file path) and return it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = dest.parent / "vmlinux-src.c"
    src.write_text(VMLINUX_C)
    subprocess.run([*GCC, "-o", str(dest), str(src)], check=True, capture_output=True)
    return dest


def sections(path: Path) -> dict[str, dict]:
    """``readelf -SW`` as {name: {type, size, flags, addr}}."""
    out = subprocess.run(
        ["readelf", "-SW", str(path)], check=True, capture_output=True, text=True
    ).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(
            r"\s*\[\s*(\d+)\]\s+(\S*)\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)"
            r"\s+([0-9a-f]+)\s+(\S*)\s+\d+\s+\d+\s+\d+",
            line,
        )
        if m and m.group(1) != "0":
            found[m.group(2)] = {
                "type": m.group(3),
                "addr": int(m.group(4), 16),
                "size": int(m.group(6), 16),
                "flags": m.group(8) if not m.group(8).isdigit() else "",
            }
    return found
