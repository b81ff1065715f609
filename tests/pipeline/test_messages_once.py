"""Messages said once: each note or error of `ktstr-ci kernel build` appears exactly once.

They used to be printed twice: by the front end and again by the pipeline (the
``--clean`` note, "range expanded to"), or wrapped twice ("kernel configure
failed: kernel configure failed: ...").
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.support.fakekernel import make_fake_kernel

CLEAN_NOTE = "--clean is only meaningful with --source (downloaded sources start clean)"


def ktstr(*args: str) -> tuple[int, dict, str]:
    p = subprocess.run(["ktstr-ci", *args], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ), stdin=subprocess.DEVNULL)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {}, p.stderr


def test_clean_note_once_on_a_build_and_never_on_a_hit(kernel_org) -> None:
    kernel_org.set_releases([("stable", "6.14.9")])
    kernel_org.add_fake_kernel("6.14.9")
    rc, res, err = ktstr("kernel", "build", "6.14.9", "--clean", "--json")
    assert rc == 0 and res["outcome"] == "cached", err
    assert err.count(CLEAN_NOTE) == 1, err
    # ktstr prints nothing about --clean when the kernel is already cached.
    rc, res, err = ktstr("kernel", "build", "6.14.9", "--clean", "--json")
    assert rc == 0 and res["outcome"] == "cache-hit", err
    assert CLEAN_NOTE not in err


def test_range_expansion_said_once(kernel_org) -> None:
    kernel_org.set_releases([("stable", "6.14.9"), ("longterm", "6.12.30")])
    # No tarballs: each version fails at its download, after the expansion.
    rc, res, err = ktstr("kernel", "build", "6.12.30..6.14.9", "--json")
    assert rc == 1, err
    assert len(res["builds"]) == 2, (res, err)
    assert err.count("range expanded to 2 kernel(s): 6.12.30, 6.14.9") == 1, err


def test_configure_failure_wrapped_once(tmp_path: Path) -> None:
    tree = make_fake_kernel(tmp_path / "linux")
    (tree / "scripts" / "kconfig" / "conf.py").write_text(
        "import sys\nsys.exit('conf: this Kconfig is broken')\n"
    )
    rc, res, err = ktstr("kernel", "build", "--source", str(tree), "--json")
    assert rc == 1 and res["outcome"] == "failed", err
    message = res["errors"][-1]["message"]
    assert message.startswith("kernel configure failed: make defconfig")
    assert message.count("kernel configure failed") == 1, message
    assert err.count("kernel configure failed") == 1, err
    assert res["errors"][-1]["kind"] == "configure-failed"
