#!/usr/bin/env python3
"""ktstr-ci fixed-cost benchmark: what a build costs beyond its make, step by step.

Two real masters with real workers (tests/support/servicekit.py), one after
the other, each given a few pushes; the REST API is polled every 20 ms, so a
step's start and end are known to about that:

* **floor**: builds of ten ``true`` steps — Buildbot's own cost per step on
  this machine (step bookkeeping, the remote command's round trips, log
  writes), which every ktstr-ci phase pays too;
* **kernel**: the kernel build factory on the fake kernel of
  tests/support/fakekernel.py, one-file changes on one branch (its make takes
  about 0.2 s), so push → done is almost all fixed cost: each phase's time is
  printed, with Buildbot's floor and our command's share (the step minus the
  floor).

Run: ``.venv/bin/python bench/step_floor_bench.py`` (about a minute);
``--builds N`` pushes per measurement (default 3, medians printed); ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from run import service_build, sh, touch_one_file  # noqa: E402

from tests.support.fakekernel import GIT_ENV, make_fake_kernel  # noqa: E402
from tests.support.servicekit import TRUE_STEPS, ServiceKit  # noqa: E402

POLL_S = 0.02


def traced_build(kit: ServiceKit, src: Path, branch: str) -> dict[str, float | dict]:
    """Push ``src`` to ``branch``: push→done and every step's wall seconds."""
    _, total, done = service_build(kit, src, branch, timeout=120, poll=POLL_S)
    return {"total": total, "steps": done["step_wall"]}


def medians(runs: list[dict]) -> tuple[float, dict[str, float]]:
    names = list(runs[0]["steps"])
    return (statistics.median(r["total"] for r in runs),
            {n: statistics.median(r["steps"].get(n, 0.0) for r in runs) for n in names})


def measure(work: Path, builds: int) -> dict:
    src = make_fake_kernel(work / "src" / "linux")
    env = {**os.environ, **GIT_ENV}
    out: dict = {}
    print("bench: builds of ten `true` steps (Buildbot's own cost per step)", file=sys.stderr)
    with ServiceKit(work / "floor", factory="tests.support.servicekit:true_steps_factory") as kit:
        traced_build(kit, src, "warm-up")
        runs = [traced_build(kit, src, f"floor-{i}") for i in range(builds)]
    total, steps = medians(runs)
    true_steps = [v for n, v in steps.items() if n.startswith("true")]
    out["floor_build_s"] = total
    out["floor_per_step_s"] = sum(true_steps) / TRUE_STEPS
    print("bench: one-file changes through the kernel build factory (fake kernel)",
          file=sys.stderr)
    with ServiceKit(work / "kernel", profiles=("tiny",)) as kit:
        traced_build(kit, src, "k")
        runs = []
        for i in range(builds):
            touch_one_file(src, i + 1)
            sh(["git", "commit", "-qam", f"one-file change {i}"], src, env=env)
            runs.append(traced_build(kit, src, "k"))
    total, steps = medians(runs)
    out["kernel_build_s"] = total
    out["kernel_steps_s"] = steps
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--builds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.builds < 1:
        ap.error("--builds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="ktstr-ci-floor-") as tmp:
        fig = measure(Path(tmp), args.builds)
    floor = fig["floor_per_step_s"]
    print(f"\nktstr-ci fixed-cost benchmark (medians of {args.builds} builds, this machine)")
    print(f"  Buildbot floor: a {TRUE_STEPS}-step build of `true`  {fig['floor_build_s']:6.2f} s push→done")
    print(f"  Buildbot floor per step                       {floor:6.3f} s")
    print(f"  kernel build (fake kernel, one-file change)   {fig['kernel_build_s']:6.2f} s push→done")
    print(f"  {'step':<24}{'seconds':>9}{'beyond floor':>14}")
    for name, secs in fig["kernel_steps_s"].items():
        print(f"  {name:<24}{secs:9.3f}{secs - floor:14.3f}")
    if args.json:
        print(json.dumps(fig, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
