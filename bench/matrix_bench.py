"""Benchmark: a matrix run whose cells are all cache hits, and the master's RSS over
1,000 recorded builds.

Runs a real service (tests/support/servicekit.py: real master, two LLC-pinned
buildbot-worker processes on fake LLC groups) with a loopback kernel.org
(tests/support/kernelorg.py) serving fake-kernel tarballs:

1. warm-up: a matrix run of VERSIONS x 2 profiles builds every cell (real make);
2. measured: the same matrix again, every cell a cache hit — seconds per cell
   (parent build wall time / cells; target <= 2 s) and each cell build's own time;
3. RSS: the master's resident set size (psutil) before and after 1,000 *trivial
   builds*, each of which records a ``kernel_builds`` row through the running
   master's RecordsService (the push builders use a stand-in factory whose only
   step is the real Record step, so each build is a recorded build with no
   kernel work; the matrix builders keep the real cell factory).

Usage: ``.venv/bin/python bench/matrix_bench.py [--versions N] [--builds N]``.
Prints numbers and ratios; no assertion (the tests assert behaviour).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGET_SECONDS_PER_CELL = 2.0
PROFILES = ["tiny", "tiny-preempt"]


def record_only_factory(**_: Any):
    """Push builders for the RSS part: one Record step (a recorded build, nothing else)."""
    from buildbot.process.factory import BuildFactory

    from ktstr_steps.buildsteps.record import Record

    f = BuildFactory()
    f.addStep(Record())
    return f


def run_matrix(kit: Any, timeout: float = 1800) -> tuple[dict, float]:
    before = max((b["buildid"] for b in kit.builds(builder="matrix")), default=0)
    start = time.monotonic()
    status, body = kit.api_status(
        "POST", "forceschedulers/force-matrix",
        {"jsonrpc": "2.0", "method": "force", "id": 1,
         "params": {"builderNames": ["matrix"], "reason": "bench"}},
        login=True,
    )  # fmt: skip
    if status != 200:
        raise SystemExit(f"force-matrix failed: {status} {body}")
    parent = kit.wait_for(
        lambda: next((b for b in kit.builds(builder="matrix") if b["buildid"] > before), None),
        60, "the matrix parent build",
    )
    done = kit.wait_finished(parent["buildid"], timeout)
    return done, time.monotonic() - start


def cell_durations(kit: Any, parent: dict) -> list[float]:
    out = []
    for b in kit.builds(builder="matrix-cell"):
        if b["complete"] and b["started_at"] >= parent["started_at"]:
            out.append(b["complete_at"] - b["started_at"])
    return out


def count_rows(eng: Any) -> int:
    from sqlalchemy import func, select

    from master.records.models import KernelBuild

    with eng.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(KernelBuild)).scalar_one())


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 1e6


def force_builds(kit: Any, n: int) -> float:
    """n forced builds of the record-only push builder; returns seconds to submit them."""
    import urllib.request

    opener = kit._login()
    start = time.monotonic()
    for i in range(n):
        body = json.dumps({"jsonrpc": "2.0", "method": "force", "id": i, "params": {
            "builderNames": ["linux-tiny"], "branch": f"bench-{i % 50}"}}).encode()
        req = urllib.request.Request(f"{kit.web_url}api/v2/forceschedulers/force", data=body,
                                     method="POST", headers={"Content-Type": "application/json"})
        with opener.open(req, timeout=30) as resp:
            resp.read()
    return time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", type=int, default=4, help="versions in the matrix (x 2 profiles)")
    ap.add_argument("--builds", type=int, default=1000, help="recorded builds for the RSS part")
    args = ap.parse_args()

    import os
    import signal

    # Killed with SIGTERM: still stop the master and workers (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    from master.records import db as records_db
    from tests.support.kernelorg import KernelOrg
    from tests.support.servicekit import ServiceKit

    versions = [f"6.12.{40 + i}" for i in range(args.versions)]
    server = KernelOrg()
    with tempfile.TemporaryDirectory(prefix="matrix-bench-") as tmp:
        root = Path(tmp)
        for v in versions:
            server.add_fake_kernel(v)
        table = "\n".join([
            "", "[matrix]", "enabled = true", f"versions = {json.dumps(versions)}",
            f"profiles = {json.dumps(PROFILES)}",
            f"releases_url = {json.dumps(server.releases_url)}",
            f"mirror = {json.dumps(server.mirror)}",
            f"download_cache = {json.dumps(str(root / 'downloads'))}", "",
        ])
        kit = ServiceKit(root, factory="bench.matrix_bench:record_only_factory",
                         llc_groups=[[0], [1]], extra_toml=table, env={
                             "KTSTR_CACHE_DIR": str(root / "kcache")})
        kit.start()
        try:
            cells = len(versions) * len(PROFILES)
            warm, warm_s = run_matrix(kit)
            print(f"warm-up run: {warm['state_string']!r} in {warm_s:.1f} s "
                  f"({warm_s / cells:.2f} s/cell, real make)")
            hit, hit_s = run_matrix(kit)
            per_cell = hit_s / cells
            durations = cell_durations(kit, hit)
            mean_cell = sum(durations) / len(durations) if durations else float("nan")
            print(f"cache-hit run: {hit['state_string']!r}")
            print(f"  {cells} cells in {hit_s:.1f} s wall (2 LLC-group workers): "
                  f"{per_cell:.2f} s per cell; target {TARGET_SECONDS_PER_CELL:.1f} s -> "
                  f"ratio {per_cell / TARGET_SECONDS_PER_CELL:.2f}")
            print(f"  one cell build (start to finish, mean of {len(durations)}): "
                  f"{mean_cell:.2f} s; hit vs build per cell: {per_cell / (warm_s / cells):.3f}")

            pid = kit.service.master_state().pid
            eng = records_db.make_engine(kit.settings.databases.records)
            rows_before = count_rows(eng)
            rss0 = rss_mb(pid)
            submit_s = force_builds(kit, args.builds)
            start = time.monotonic()

            def recorded() -> bool:
                return count_rows(eng) >= rows_before + args.builds

            kit.wait_for(recorded, 3600, f"{args.builds} recorded builds", interval=2)
            # Let the last builds finish their bookkeeping before measuring.
            kit.wait_for(lambda: not kit.api("builds", complete="false")["builds"], 600,
                         "no running builds", interval=1)
            total_s = time.monotonic() - start + submit_s
            rss1 = rss_mb(pid)
            rows = count_rows(eng) - rows_before
            eng.dispose()
            print(f"master RSS: {rss0:.1f} MB before, {rss1:.1f} MB after {rows} recorded builds "
                  f"(trivial builds through the RecordsService; {total_s:.0f} s, "
                  f"{total_s / max(rows, 1):.2f} s/build)")
            print(f"  growth {rss1 - rss0:+.1f} MB, ratio after/before {rss1 / rss0:.2f}, "
                  f"{1000 * (rss1 - rss0) / max(rows, 1):.1f} kB per recorded build")
        finally:
            kit.stop()
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
