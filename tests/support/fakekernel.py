"""A small kernel-like source tree for tests: real make, real gcc, real ELF vmlinux.

``make_fake_kernel(dest)`` writes a tree that behaves like a kbuild tree where
ktstr-ci's pipeline looks at it, and builds in about a second:

* config targets ``defconfig``, ``tinyconfig``, ``allnoconfig``, ``olddefconfig``
  run ``scripts/kconfig/conf.py`` against a ``Kconfig`` file with types,
  defaults and ``depends on`` rules. Semantics follow kbuild: the last
  assignment of a symbol wins, unknown symbols are dropped, a symbol whose
  dependencies are unmet ends as ``# CONFIG_X is not set``, the output is
  normalised (header, Kconfig order, one line per known symbol).
  As on a real x86 tree, ``tinyconfig``/``allnoconfig`` give a 32-bit config
  unless ``ARCH=x86_64`` is passed (``ARCH=x86_64`` forces ``CONFIG_64BIT=y``).
* the default target compiles C files with gcc (``-Wall``, then ``$(KCFLAGS)``
  last so ``KCFLAGS=-Wno-error`` can undo ``-Werror``), recompiles an object
  when its command line changed (kbuild's ``if_changed``, using the saved
  ``.<obj>.cmd`` files), links a static ELF ``vmlinux`` with ``.symtab`` and
  DWARF, adds a ``.BTF`` section with objcopy, and writes
  ``arch/x86/boot/bzImage`` and ``System.map``.
* ``make compile_commands.json`` first builds the objects (like the kernel,
  whose rule depends on ``vmlinux.a``), then runs the tree's own
  ``scripts/clang-tools/gen_compile_commands.py -d . -o compile_commands.json``.
* ``mrproper`` removes everything generated, ``.config`` included.

Test knobs are config symbols, so they travel through ``--extra-kconfig`` like
any user fragment:

* ``CONFIG_KTSTR_FAKE_BREAK=y``   kernel/sched/ext.c fails with a real gcc error
* ``CONFIG_KTSTR_FAKE_WARN=y``    init/main.c gets a real gcc -Wunused-variable warning
* ``CONFIG_KTSTR_FAKE_WERROR=y``  adds -Werror (a WARN build then fails unless
  KCFLAGS=-Wno-error is passed)
* ``CONFIG_KTSTR_FAKE_SLEEP=N``   make runs ``sleep N`` (a direct child of make)
  before linking
* ``CONFIG_KTSTR_FAKE_NEEDS_DEP=y`` depends on ``CONFIG_KTSTR_FAKE_DEP`` (off by
  default), so the line is dropped by olddefconfig; ``SCHED_CLASS_EXT`` depends
  on ``DEBUG_INFO_BTF`` as in the real Kconfig.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
from pathlib import Path

# Fixed identity so commits are reproducible and no global git config is needed.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "ktstr-ci test",
    "GIT_AUTHOR_EMAIL": "test@ktstr-ci.invalid",
    "GIT_COMMITTER_NAME": "ktstr-ci test",
    "GIT_COMMITTER_EMAIL": "test@ktstr-ci.invalid",
    "GIT_AUTHOR_DATE": "2025-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2025-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}

# (name, type, default, depends-on list). Declaration order is .config order.
# The dependencies mirror the real Kconfig where ktstr cares about them.
SYMBOLS: list[tuple[str, str, str, list[str]]] = [
    ("64BIT", "bool", "y", []),
    ("X86_64", "bool", "y", ["64BIT"]),
    ("LOCALVERSION", "string", "", []),
    ("CC_OPTIMIZE_FOR_SIZE", "bool", "n", []),
    ("SMP", "bool", "y", []),
    ("SCHED_SMT", "bool", "y", ["SMP"]),
    ("SCHED_MC", "bool", "y", ["SMP"]),
    ("NUMA", "bool", "n", ["SMP"]),
    ("NUMA_BALANCING", "bool", "n", ["NUMA"]),
    ("ACPI", "bool", "y", []),
    ("ACPI_HMAT", "bool", "n", ["ACPI", "NUMA"]),
    ("PREEMPT", "bool", "n", []),
    ("PREEMPT_DYNAMIC", "bool", "n", ["PREEMPT"]),
    ("SCHED_CORE", "bool", "n", ["SCHED_SMT"]),
    ("CGROUPS", "bool", "y", []),
    ("CPUSETS", "bool", "n", ["CGROUPS"]),
    ("CGROUP_SCHED", "bool", "n", ["CGROUPS"]),
    ("PSI", "bool", "n", []),
    ("SCHEDSTATS", "bool", "n", []),
    ("PRINTK", "bool", "y", []),
    ("KALLSYMS", "bool", "y", []),
    ("KALLSYMS_ALL", "bool", "n", ["KALLSYMS"]),
    ("IKCONFIG", "bool", "n", []),
    ("IKCONFIG_PROC", "bool", "n", ["IKCONFIG", "PROC_FS"]),
    ("MODULES", "bool", "y", []),
    ("BLOCK", "bool", "y", []),
    ("BPF", "bool", "y", []),
    ("BPF_SYSCALL", "bool", "n", ["BPF"]),
    ("BPF_JIT", "bool", "n", ["BPF"]),
    ("BPF_JIT_ALWAYS_ON", "bool", "n", ["BPF_JIT"]),
    ("SCHED_CLASS_EXT", "bool", "n", ["BPF_SYSCALL", "DEBUG_INFO_BTF"]),
    ("DEBUG_INFO", "bool", "n", []),
    ("DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT", "bool", "n", ["DEBUG_INFO"]),
    ("DEBUG_INFO_REDUCED", "bool", "n", ["DEBUG_INFO"]),
    ("DEBUG_INFO_SPLIT", "bool", "n", ["DEBUG_INFO"]),
    ("DEBUG_INFO_BTF", "bool", "n", ["DEBUG_INFO"]),
    ("DEBUG_INFO_BTF_MODULES", "bool", "n", ["DEBUG_INFO_BTF", "MODULES"]),
    ("FTRACE", "bool", "y", []),
    ("FUNCTION_TRACER", "bool", "n", ["FTRACE"]),
    ("DYNAMIC_FTRACE", "bool", "n", ["FUNCTION_TRACER"]),
    ("KPROBES", "bool", "n", []),
    ("PERF_EVENTS", "bool", "y", []),
    ("KPROBE_EVENTS", "bool", "n", ["FTRACE", "KPROBES"]),
    ("BPF_EVENTS", "bool", "n", ["KPROBE_EVENTS", "PERF_EVENTS"]),
    ("DEBUG_FS", "bool", "n", []),
    ("PROVE_LOCKING", "bool", "n", []),
    ("DEBUG_LOCKDEP", "bool", "n", ["PROVE_LOCKING"]),
    ("TTY", "bool", "y", []),
    ("UNIX98_PTYS", "bool", "y", ["TTY"]),
    ("SERIAL_8250", "bool", "n", ["TTY"]),
    ("SERIAL_8250_CONSOLE", "bool", "n", ["SERIAL_8250"]),
    ("SERIAL_OF_PLATFORM", "bool", "n", ["SERIAL_8250"]),
    ("SERIAL_AMBA_PL011", "bool", "n", ["TTY"]),
    ("SERIAL_AMBA_PL011_CONSOLE", "bool", "n", ["SERIAL_AMBA_PL011"]),
    ("VIRTIO", "bool", "n", []),
    ("VIRTIO_MMIO", "bool", "n", ["VIRTIO"]),
    ("VIRTIO_MMIO_CMDLINE_DEVICES", "bool", "n", ["VIRTIO_MMIO"]),
    ("VIRTIO_CONSOLE", "bool", "n", ["VIRTIO", "TTY"]),
    ("VIRTIO_BLK", "bool", "n", ["VIRTIO", "BLOCK"]),
    ("BLK_DEV_INITRD", "bool", "n", []),
    ("RD_LZ4", "bool", "n", ["BLK_DEV_INITRD"]),
    ("PROC_FS", "bool", "y", []),
    ("SYSFS", "bool", "y", []),
    ("DEVMEM", "bool", "y", []),
    ("STRICT_DEVMEM", "bool", "y", ["DEVMEM"]),
    ("DEVTMPFS", "bool", "n", []),
    ("TMPFS", "bool", "n", []),
    ("SHMEM", "bool", "y", []),
    ("BINFMT_SCRIPT", "bool", "y", []),
    ("EARLY_PRINTK", "bool", "y", ["PRINTK"]),
    ("HYPERVISOR_GUEST", "bool", "n", []),
    ("PARAVIRT", "bool", "n", ["HYPERVISOR_GUEST"]),
    ("PARAVIRT_TIME_ACCOUNTING", "bool", "n", ["PARAVIRT"]),
    ("SOUND", "bool", "y", []),
    ("DRM", "bool", "y", []),
    ("USB_SUPPORT", "bool", "y", []),
    ("WIRELESS", "bool", "y", []),
    ("BLUETOOTH", "bool", "n", []),
    ("INPUT", "bool", "y", []),
    ("FB", "bool", "n", []),
    ("VGA_CONSOLE", "bool", "y", []),
    ("KTSTR_FAKE_BREAK", "bool", "n", []),
    ("KTSTR_FAKE_WARN", "bool", "n", []),
    ("KTSTR_FAKE_WERROR", "bool", "n", []),
    ("KTSTR_FAKE_SLEEP", "int", "0", []),
    ("KTSTR_FAKE_DEP", "bool", "n", []),
    ("KTSTR_FAKE_NEEDS_DEP", "bool", "n", ["KTSTR_FAKE_DEP"]),
]

# What `make defconfig` starts from (arch/x86/configs/x86_64_defconfig).
X86_64_DEFCONFIG = """\
CONFIG_64BIT=y
CONFIG_SMP=y
CONFIG_NUMA=y
CONFIG_CGROUPS=y
CONFIG_CPUSETS=y
CONFIG_BPF_SYSCALL=y
CONFIG_KPROBES=y
CONFIG_DEBUG_FS=y
CONFIG_SERIAL_8250=y
CONFIG_SERIAL_8250_CONSOLE=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_HYPERVISOR_GUEST=y
CONFIG_PARAVIRT=y
"""

# What `make tinyconfig` adds on top of allnoconfig (kernel/configs/tiny.config).
TINY_CONFIG = """\
CONFIG_CC_OPTIMIZE_FOR_SIZE=y
# CONFIG_KALLSYMS is not set
"""

KCONFIG_HEADER = """\
# Kconfig of the ktstr-ci fake kernel tree.
# Format (a subset of kconfig): "config NAME", then indented "bool"/"int"/
# "string", "default VALUE" and "depends on A && B" lines.

"""

CONF_PY = r'''#!/usr/bin/env python3
"""kconfig for the fake tree: base configs, olddefconfig, syncconfig."""
import os
import re
import sys

ASSIGN = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
NOTSET = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set$")


def parse_kconfig(path):
    syms = {}
    cur = None
    for raw in open(path, encoding="utf-8"):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("config "):
            cur = {"name": line.split()[1], "type": "bool", "default": "n", "deps": []}
            syms[cur["name"]] = cur
        elif line in ("bool", "int", "string"):
            cur["type"] = line
        elif line.startswith("default "):
            cur["default"] = line[len("default "):].strip().strip('"')
        elif line.startswith("depends on "):
            cur["deps"] += [d.strip() for d in line[len("depends on "):].split("&&")]
        else:
            sys.exit("Kconfig: syntax error: " + line)
    return syms


def read_config(path, syms):
    """Assignments in file order; the last one of a symbol wins, like kbuild."""
    vals = {}
    if not os.path.exists(path):
        return vals
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            m = ASSIGN.match(line)
            if m:
                name, val = m.group(1), m.group(2)
            else:
                m = NOTSET.match(line)
                if not m:
                    continue
                name, val = m.group(1), "n"
            sym = syms.get(name)
            if sym is None:
                continue  # unknown symbols are dropped
            if sym["type"] == "bool" and val not in ("y", "n", "m"):
                print(f"{path}:{n}:warning: symbol value '{val}' invalid for {name}", file=sys.stderr)
                continue
            if sym["type"] == "int" and not re.fullmatch(r"-?[0-9]+", val):
                print(f"{path}:{n}:warning: symbol value '{val}' invalid for {name}", file=sys.stderr)
                continue
            if sym["type"] == "bool" and val == "m":
                val = "y"  # no modules in the fake tree
            vals[name] = val.strip('"') if sym["type"] == "string" else val
    return vals


def resolve(syms, vals, arch):
    out = {}
    for name, sym in syms.items():
        out[name] = vals.get(name, sym["default"])
    # 64BIT is a prompt only for ARCH=x86; ARCH=x86_64 / i386 force it, as upstream.
    if arch == "x86_64":
        out["64BIT"] = "y"
    elif arch == "i386":
        out["64BIT"] = "n"
    changed = True
    while changed:  # dependencies to a fixed point
        changed = False
        for name, sym in syms.items():
            if sym["type"] == "bool" and out[name] == "y":
                if any(out.get(d) != "y" for d in sym["deps"]):
                    out[name] = "n"
                    changed = True
    return out


def render(syms, out, arch):
    srcarch = "x86"
    lines = ["#", "# Automatically generated file; DO NOT EDIT.",
             f"# Linux/{srcarch} 6.12.0-ktstrfake Kernel Configuration", "#"]
    for name, sym in syms.items():
        v = out[name]
        if sym["type"] == "bool":
            lines.append(f"CONFIG_{name}=y" if v == "y" else f"# CONFIG_{name} is not set")
        elif sym["type"] == "string":
            lines.append(f'CONFIG_{name}="{v}"')
        else:
            lines.append(f"CONFIG_{name}={v}")
    return "\n".join(lines) + "\n"


def write_if_changed(path, text):
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return  # keep the mtime so nothing depending on it rebuilds
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_config(text):
    if os.path.exists(".config"):
        os.replace(".config", ".config.old")
    with open(".config", "w", encoding="utf-8") as f:
        f.write(text)
    print("#\n# configuration written to .config\n#")


def main():
    mode, kconfig = sys.argv[1], sys.argv[2]
    arch = os.environ.get("ARCH", "x86")
    if arch not in ("x86", "x86_64", "i386"):
        sys.exit(f"*** unsupported ARCH={arch} in this tree (arch/{arch} does not exist)")
    syms = parse_kconfig(kconfig)
    if mode == "--olddefconfig":
        if not os.path.exists(".config"):
            sys.exit("*** .config not found; run a base config target first")
        write_config(render(syms, resolve(syms, read_config(".config", syms), arch), arch))
    elif mode in ("--allnoconfig", "--tinyconfig"):
        vals = {n: ("n" if s["type"] == "bool" else s["default"]) for n, s in syms.items()}
        if mode == "--tinyconfig":
            vals.update(read_config("kernel/configs/tiny.config", syms))
        write_config(render(syms, resolve(syms, vals, arch), arch))
    elif mode == "--defconfig":
        print("*** Default configuration is based on 'x86_64_defconfig'")
        vals = read_config("arch/x86/configs/x86_64_defconfig", syms)
        write_config(render(syms, resolve(syms, vals, arch), arch))
    elif mode == "--syncconfig":
        out = resolve(syms, read_config(".config", syms), arch)
        auto, header = [], ["/* Automatically generated file; DO NOT EDIT. */"]
        for name, sym in syms.items():
            v = out[name]
            if sym["type"] == "bool":
                if v == "y":
                    auto.append(f"CONFIG_{name}=y")
                    header.append(f"#define CONFIG_{name} 1")
            elif sym["type"] == "string":
                auto.append(f'CONFIG_{name}="{v}"')
                header.append(f'#define CONFIG_{name} "{v}"')
            else:
                auto.append(f"CONFIG_{name}={v}")
                header.append(f"#define CONFIG_{name} {v}")
        write_if_changed("include/config/auto.conf", "\n".join(auto) + "\n")
        write_if_changed("include/generated/autoconf.h", "\n".join(header) + "\n")
    else:
        sys.exit("usage: conf.py --{defconfig,tinyconfig,allnoconfig,olddefconfig,syncconfig} Kconfig")


main()
'''

GEN_COMPILE_COMMANDS_PY = r'''#!/usr/bin/env python3
"""Write compile_commands.json from kbuild .cmd files (same CLI as the kernel's script)."""
import argparse
import json
import os
import re

_LINE_PATTERN = re.compile(r"^(saved)?cmd_[^ ]*\.o := (.* )([^ ]*\.[cS]) *(;|$)")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-d", "--directory", default=".", help="the build output directory")
    ap.add_argument("-o", "--output", default="compile_commands.json")
    ap.add_argument("--log_level", default="WARNING")
    ap.add_argument("paths", nargs="*", help="ignored: the whole directory is walked")
    args = ap.parse_args()
    root = os.path.abspath(args.directory)
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if not (name.startswith(".") and name.endswith(".o.cmd")):
                continue
            with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                for line in f:
                    m = _LINE_PATTERN.match(line.rstrip("\n"))
                    if m:
                        entries.append({
                            "command": m.group(2) + m.group(3),
                            "directory": root,
                            "file": os.path.join(root, m.group(3)),
                        })
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(entries, f, indent=2, sort_keys=True)
        f.write("\n")


main()
'''

TOP_MAKEFILE = """\
# SPDX-License-Identifier: GPL-2.0
# ktstr-ci fake kernel tree: the kbuild targets ktstr's pipeline calls.
VERSION = 6
PATCHLEVEL = 12
SUBLEVEL = 0
EXTRAVERSION = -ktstrfake
NAME = ktstr-ci fake kernel

SUBARCH := $(shell uname -m | sed -e 's/i.86/x86/' -e 's/x86_64/x86/')
ARCH ?= $(SUBARCH)
export ARCH
PYTHON3 ?= python3
export PYTHON3
KCFLAGS ?=
export KCFLAGS
CONF := $(PYTHON3) scripts/kconfig/conf.py

.PHONY: all defconfig tinyconfig allnoconfig olddefconfig syncconfig mrproper clean FORCE
.PHONY: compile_commands.json

all: include/config/auto.conf
\t$(MAKE) -f scripts/Makefile.build all

defconfig tinyconfig allnoconfig olddefconfig:
\t@$(CONF) --$@ Kconfig

.config:
\t@echo >&2 '***'
\t@echo >&2 '*** Configuration file ".config" not found!'
\t@echo >&2 '***'
\t@echo >&2 '*** Please run some configurator (e.g. "make oldconfig" or'
\t@echo >&2 '*** "make menuconfig" or "make xconfig").'
\t@echo >&2 '***'
\t@exit 1

include/config/auto.conf: .config Kconfig scripts/kconfig/conf.py
\t@echo '  SYNC    include/config/auto.conf'
\t@$(CONF) --syncconfig Kconfig

# Like the kernel: the rule depends on the objects (vmlinux.a there), so the
# objects are brought up to date with this call's flags first.
compile_commands.json: include/config/auto.conf
\t$(MAKE) -f scripts/Makefile.build objs
\t@echo '  GEN     $@'
\t@$(PYTHON3) scripts/clang-tools/gen_compile_commands.py -d . -o $@

clean:
\t@echo '  CLEAN   .'
\t@find . -name '*.o' -delete -o -name '.*.o.cmd' -delete
\t@rm -f vmlinux vmlinux.tmp System.map arch/x86/boot/bzImage .btf.bin .vmlinux.cmd

mrproper: clean
\t@echo '  CLEAN   include/config include/generated'
\t@rm -rf include/config include/generated
\t@rm -f .config .config.old compile_commands.json
"""

BUILD_MAKEFILE = """\
# SPDX-License-Identifier: GPL-2.0
# The compile and link part of the fake tree (a sub-make, as in kbuild).
include include/config/auto.conf

CC := gcc
OBJCOPY := objcopy
NM := nm

KBUILD_CFLAGS := -Wall -O2 -g -ffreestanding -fno-pie -fno-stack-protector -Iinclude \\
\t-include include/generated/autoconf.h
ifeq ($(CONFIG_KTSTR_FAKE_WERROR),y)
KBUILD_CFLAGS += -Werror
endif
ifeq ($(CONFIG_64BIT),y)
KBUILD_CFLAGS += -m64
endif
# The user's KCFLAGS go last so they win, as in kbuild.
c_flags = $(KBUILD_CFLAGS) $(KCFLAGS)

objs := init/main.o kernel/sched/core.o kernel/sched/ext.o lib/string.o arch/x86/kernel/head64.o

space := $(subst ,, )
cmd_cc_o_c = $(CC) $(c_flags) -c -o $@ $<
# kbuild's if_changed: rebuild when a prerequisite is newer, the object is
# missing, or the command line differs from the one saved in .<obj>.cmd.
cmd-changed = $(filter-out $(subst $(space),@,$(strip $(savedcmd_$@))),$(subst $(space),@,$(strip $(cmd_cc_o_c))))
need-build = $(strip $(filter-out FORCE,$?) $(cmd-changed) $(if $(wildcard $@),,missing))

-include $(foreach o,$(objs),$(dir $(o)).$(notdir $(o)).cmd)

.PHONY: all objs FORCE slowpoke
all: arch/x86/boot/bzImage
objs: $(objs)

%.o: %.c include/generated/autoconf.h FORCE
\t@$(if $(need-build),echo '  CC      $@' && $(cmd_cc_o_c) && echo 'savedcmd_$@ := $(cmd_cc_o_c)' > $(dir $@).$(notdir $@).cmd,:)

# The sleep knob: a real process, a direct child of make, before the link.
slowpoke:
ifneq ($(CONFIG_KTSTR_FAKE_SLEEP),0)
\tsleep $(CONFIG_KTSTR_FAKE_SLEEP)
endif

vmlinux: $(objs) | slowpoke
\t@echo '  LD      $@'
\t@$(CC) -static -nostdlib -no-pie -Wl,-e,startup_64 -Wl,--build-id=none -o $@.tmp $(objs)
\t@$(PYTHON3) -c 'import struct,sys; sys.stdout.buffer.write(struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 0, 0, 1) + bytes(1))' > .btf.bin
\t@echo '  BTF     $@'
\t@$(OBJCOPY) --add-section .BTF=.btf.bin $@.tmp
\t@mv -f $@.tmp $@
\t@echo 'savedcmd_$@ := $(CC) -static -nostdlib -o $@ $(objs)' > .$@.cmd
\t@$(NM) -n $@ > System.map

arch/x86/boot/bzImage: vmlinux
\t@echo '  OBJCOPY $@'
\t@mkdir -p $(dir $@)
\t@$(OBJCOPY) -O binary -R .note -R .comment -R .BTF vmlinux $@
\t@echo 'Kernel: $@ is ready  (#1)'
"""

C_FILES = {
    "include/linux/kernel.h": """\
#ifndef _LINUX_KERNEL_H
#define _LINUX_KERNEL_H
unsigned long ktstr_strlen(const char *s);
int sched_init(void);
int scx_init(void);
void start_kernel(void);
extern volatile unsigned long jiffies;
#endif
""",
    "init/main.c": """\
#include <linux/kernel.h>

volatile unsigned long jiffies;
static const char linux_banner[] = "Linux version 6.12.0-ktstrfake";

void start_kernel(void)
{
#ifdef CONFIG_KTSTR_FAKE_WARN
\tint ktstr_fake_unused;
#endif
\tjiffies = ktstr_strlen(linux_banner);
\tsched_init();
\tscx_init();
\tfor (;;)
\t\tjiffies++;
}
""",
    "kernel/sched/core.c": """\
#include <linux/kernel.h>

int sysctl_sched_base_slice = 750000;

int sched_init(void)
{
\treturn sysctl_sched_base_slice > 0;
}
""",
    "kernel/sched/ext.c": """\
#include <linux/kernel.h>

#ifdef CONFIG_KTSTR_FAKE_BREAK
int scx_broken = ktstr_fake_undeclared_symbol;
#endif

#ifdef CONFIG_SCHED_CLASS_EXT
int scx_enabled = 1;
#else
int scx_enabled;
#endif

int scx_init(void)
{
\treturn scx_enabled;
}
""",
    "lib/string.c": """\
#include <linux/kernel.h>

unsigned long ktstr_strlen(const char *s)
{
\tconst char *p = s;

\twhile (*p)
\t\tp++;
\treturn (unsigned long)(p - s);
}
""",
    "arch/x86/kernel/head64.c": """\
#include <linux/kernel.h>

void startup_64(void)
{
\tstart_kernel();
}
""",
}


def _kconfig_text() -> str:
    out = [KCONFIG_HEADER]
    for name, typ, default, deps in SYMBOLS:
        out.append(f"config {name}\n\t{typ}\n")
        out.append(f'\tdefault "{default}"\n' if typ == "string" else f"\tdefault {default}\n")
        if deps:
            out.append(f"\tdepends on {' && '.join(deps)}\n")
        out.append("\n")
    return "".join(out)


def tree_files() -> dict[str, str]:
    """Every file of the fake tree, path relative to the tree root -> text."""
    files = {
        "Makefile": TOP_MAKEFILE,
        "Kconfig": _kconfig_text(),
        "scripts/Makefile.build": BUILD_MAKEFILE,
        "scripts/kconfig/conf.py": CONF_PY,
        "scripts/clang-tools/gen_compile_commands.py": GEN_COMPILE_COMMANDS_PY,
        "arch/x86/configs/x86_64_defconfig": X86_64_DEFCONFIG,
        "kernel/configs/tiny.config": TINY_CONFIG,
        "README": "ktstr-ci fake kernel tree for tests.\n",
        ".gitignore": "*.o\n.*.cmd\n.config\n.config.old\nvmlinux\nvmlinux.tmp\nSystem.map\n"
        "bzImage\ninclude/config/\ninclude/generated/\ncompile_commands.json\n.btf.bin\n",
    }
    files.update(C_FILES)
    return files


def slow_kconfig(seconds: int) -> str:
    """The tree's Kconfig with make sleeping ``seconds`` before the link (a long make)."""
    return re.sub(r"(config KTSTR_FAKE_SLEEP\n\tint\n\tdefault )0", rf"\g<1>{seconds}",
                  tree_files()["Kconfig"])


def slow_tree_files(seconds: int, marker: str = "") -> dict[str, str]:
    """The fake kernel whose make sleeps ``seconds``; ``marker`` makes a distinct commit."""
    files = tree_files()
    files["Kconfig"] = slow_kconfig(seconds)
    if marker:
        files["README"] = marker + "\n"  # a distinct commit, so a distinct cache key
    return files


def git(tree: Path, *args: str) -> str:
    """Run git in ``tree`` with the fixed test identity; returns stdout."""
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(
        ["git", "-C", str(tree), *args], check=True, env=env, capture_output=True, text=True
    ).stdout


def make_fake_kernel(dest: Path, *, git: bool = True, commit: bool = True) -> Path:
    """Write the fake tree into ``dest`` (created) and return it.

    ``git`` runs ``git init``; ``commit`` (only with ``git``) adds and commits
    everything so the tree starts clean.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for rel, text in tree_files().items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if rel.endswith(".py"):
            path.chmod(0o755)
    if git:
        _git(dest, "init", "-q", "-b", "main")
        if commit:
            _git(dest, "add", "-A")
            _git(dest, "commit", "-q", "-m", "fake kernel 6.12.0")
    return dest


_git = git  # make_fake_kernel's ``git`` parameter shadows the helper inside it


def fake_kernel_tarball(tree: Path, version: str) -> bytes:
    """A ``linux-{version}/`` .tar.xz of the tree's sources (no .git), like kernel.org's."""
    tree = Path(tree)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for rel in sorted(tree_files()):
            src = tree / rel
            if src.exists():
                tar.add(src, arcname=f"linux-{version}/{rel}", recursive=False)
    return buf.getvalue()
