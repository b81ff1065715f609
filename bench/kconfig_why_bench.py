#!/usr/bin/env python3
"""How long "why was this option dropped" costs on the real 6.12 tree.

Unpacks only the Kconfig files and scripts/ of Debian's linux-source-6.12,
then times: the cold kconfiglib parse (including pickling it under the run
dir), a later build's load of that pickle, and one reason evaluated against a
final .config. A configure pays the cold figure once per tree and commit and
the cached one after that. Run: ``.venv/bin/python bench/kconfig_why_bench.py``
(``--json`` prints the figures as JSON too).
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ktstr_steps import kconfig_why  # noqa: E402

TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not TARBALL.is_file():
        print(f"{TARBALL} is missing: install Debian's linux-source-6.12", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kconfig-why-bench-") as tmp:
        base = Path(tmp)
        t0 = time.monotonic()
        with tarfile.open(TARBALL) as tf:
            wanted = [m for m in tf if "Kconfig" in m.name.rsplit("/", 1)[-1]
                      or "/scripts/" in m.name]
            tf.extractall(base, members=wanted, filter="data")
        extract = time.monotonic() - t0
        tree = base / "linux-source-6.12"
        (tree / ".config").write_text("CONFIG_BPF=y\nCONFIG_BPF_SYSCALL=y\n")
        run = base / "run"
        t0 = time.monotonic()
        kconf = kconfig_why.load_tree(tree, "x86_64", cache_dir=run, commit="bench")
        cold = time.monotonic() - t0
        t0 = time.monotonic()
        reasons = kconfig_why.explain_dropped(tree, [("SCHED_CLASS_EXT", "y")], arch="x86_64",
                                              cache_dir=run, commit="bench")
        cached = time.monotonic() - t0
        pickle_bytes = sum(p.stat().st_size for p in (run / kconfig_why.PARSE_DIR).iterdir())
    figures = {"symbols": len(kconf.unique_defined_syms), "extract_s": round(extract, 2),
               "cold_parse_and_pickle_s": round(cold, 2), "cached_reason_s": round(cached, 2),
               "pickle_bytes": pickle_bytes, "reason": reasons["SCHED_CLASS_EXT"]}
    for name, value in figures.items():
        print(f"{name:>24}: {value}")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
