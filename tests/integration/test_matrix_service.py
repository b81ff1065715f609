"""The nightly matrix on a real service: real master, real LLC-pinned buildbot-worker
processes (two fake LLC groups), the real ``master.cfg`` and kernel build steps, a
loopback kernel.org serving releases.json and fake-kernel tarballs, real make.

A run is started with the ``force-matrix`` button (REST, logged in), exactly
what the nightly scheduler does at its time of day.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from master.records import db as records_db
from master.records import queries
from tests.support.fakekernel import make_fake_kernel
from tests.support.kernelorg import KernelOrg
from tests.support.servicekit import ServiceKit

# A cache-hit cell: no reservation, no kernel phase, no release - not even as skipped steps.
KERNEL_PHASES = {"reserve", "source-lock", "configure", "make", "validate", "compile-commands",
                 "cache-store", "release"}


def matrix_table(kernel_org: KernelOrg, root: Path, versions: list[str],
                 profiles: list[str]) -> str:
    """A ``[matrix]`` table for the kit's settings file (servicekit's extra_toml)."""
    return "\n".join([
        "",
        "[matrix]",
        "enabled = true",
        f"versions = {json.dumps(versions)}",
        f"profiles = {json.dumps(profiles)}",
        'time = "03:00"',
        # The settings' own URLs, not the environment's, must be what is used.
        f"releases_url = {json.dumps(kernel_org.releases_url)}",
        f"mirror = {json.dumps(kernel_org.mirror)}",
        f"download_cache = {json.dumps(str(root / 'downloads'))}",
        "",
    ])


def start_kit(tmp_path: Path, kernel_org: KernelOrg, monkeypatch: pytest.MonkeyPatch,
              versions: list[str], profiles: list[str], **kw: Any) -> ServiceKit:
    # Only the settings may point at the loopback kernel.org: break the environment's URLs.
    monkeypatch.setenv("KTSTR_CI_RELEASES_URL", "http://127.0.0.1:9/unused-releases.json")
    monkeypatch.setenv("KTSTR_CI_KERNEL_MIRROR", "http://127.0.0.1:9/unused-mirror")
    table = matrix_table(kernel_org, tmp_path, versions, profiles)
    return ServiceKit(tmp_path, llc_groups=[[0], [1]], extra_toml=table, **kw).start()


# Buildbot prefixes the build's summary with "build successful" / "failed"; the text
# after it is the finish step's totals line.
def run_matrix(kit: ServiceKit, timeout: float = 600) -> dict:
    """Press the force-matrix button; wait for the parent build; return it (with props)."""
    before = max((b["buildid"] for b in kit.builds(builder="matrix")), default=0)
    status, body = kit.api_status(
        "POST", "forceschedulers/force-matrix",
        {"jsonrpc": "2.0", "method": "force", "id": 1,
         "params": {"builderNames": ["matrix"], "reason": "test"}},
        login=True,
    )  # fmt: skip
    assert status == 200, body
    parent = kit.wait_for(
        lambda: next((b for b in kit.builds(builder="matrix") if b["buildid"] > before), None),
        60, "the matrix parent build",
    )
    return kit.api(f"builds/{kit.wait_finished(parent['buildid'], timeout)['buildid']}",
                   property="*")["builds"][0]


def cell_builds(kit: ServiceKit, parent: dict) -> list[dict]:
    """The builds the parent triggered: their buildsets name it as parent_buildid."""
    out = []
    for b in kit.api("builds", property="*", order="buildid")["builds"]:
        [req] = kit.api(f"buildrequests/{b['buildrequestid']}")["buildrequests"]
        [bset] = kit.api(f"buildsets/{req['buildsetid']}")["buildsets"]
        if bset["parent_buildid"] == parent["buildid"]:
            out.append(b)
    return out


def step_names(kit: ServiceKit, buildid: int, *, ran_only: bool = True) -> set[str]:
    steps = kit.build_steps(buildid)
    # A skipped step (doStepIf) has results SKIPPED (3).
    return {s["name"] for s in steps if not ran_only or s["results"] != kit.SKIPPED}


def records_engine(kit: ServiceKit):
    return records_db.make_engine(kit.settings.databases.records)


def urls_of(kit: ServiceKit, buildid: int, step: str) -> list[dict]:
    [s] = [s for s in kit.build_steps(buildid) if s["name"] == step]
    return s["urls"]


def test_matrix_runs_build_then_hit_then_resolve_again(
    tmp_path: Path, kernel_org: KernelOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel_org.add_fake_kernel("6.15.11")
    kernel_org.add_fake_kernel("6.12.44")
    kit = start_kit(tmp_path, kernel_org, monkeypatch, ["6.15", "6.12.44"],
                    ["tiny", "tiny-preempt"])
    try:
        builders = {b["name"] for b in kit.api("builders")["builders"]}
        assert {"matrix", "matrix-cell"} <= builders

        # -- run 1: every cell built; each version downloaded once for its two profiles --
        parent = run_matrix(kit)
        assert parent["results"] == kit.SUCCESS
        assert parent["state_string"].endswith("4 cells: 4 built, 0 cache hits, 0 failed")
        props = {k: v[0] for k, v in parent["properties"].items()}
        assert props["matrix_versions"] == ["6.15.11", "6.12.44"]  # "6.15" resolved at start
        run_id = props["matrix_run_id"]
        cells = cell_builds(kit, parent)
        assert len(cells) == 4
        # WARNINGS: tiny-preempt drops a preemption option the fake Kconfig cannot satisfy.
        assert all(c["results"] in (kit.SUCCESS, kit.WARNINGS) for c in cells)
        seen = {(c["properties"]["kernel_version"][0], c["properties"]["profile"][0])
                for c in cells}
        assert seen == {(v, p) for v in ("6.15.11", "6.12.44") for p in ("tiny", "tiny-preempt")}
        # Spread over both LLC-group workers (two cells per version run side by side).
        assert {c["properties"]["workername"][0] for c in cells} == set(kit.worker_names)
        for c in cells:
            assert c["properties"]["kernel_outcome"][0] == "cached"
            assert "make" in step_names(kit, c["buildid"])
        for v in ("6.15.11", "6.12.44"):
            assert kernel_org.count(kernel_org.tarball_path(v)) == 1
            assert (tmp_path / "downloads" / f"linux-{v}.tar.xz").is_file()
        # One link per cell build on the fan-out step, and the grid page on the finish step.
        links = urls_of(kit, parent["buildid"], "cells")
        assert sorted(u["name"] for u in links) == sorted(
            f"{v} x {p}: cached" for v in ("6.15.11", "6.12.44") for p in ("tiny", "tiny-preempt"))
        cell_urls = {f"{kit.settings.web_url}#/builders/{c['builderid']}/builds/{c['number']}"
                     for c in cells}
        assert {u["url"] for u in links} == cell_urls
        [grid_link] = urls_of(kit, parent["buildid"], "finish")
        assert grid_link["url"].endswith(f"/#/ktstr/matrix?id={run_id}")

        eng = records_engine(kit)
        grid = queries.matrix_grid(eng, run_id)
        run = grid["run"]
        assert (run["cells"], run["built"], run["cache_hits"], run["failed"]) == (4, 4, 0, 0)
        assert run["versions"] == ["6.15.11", "6.12.44"] and run["buildid"] == parent["buildid"]
        assert run["spec"] == "6.15 6.12.44" and run["finished_at"] is not None
        for v in ("6.15.11", "6.12.44"):
            for p in ("tiny", "tiny-preempt"):
                row = grid["cells"][v][p]
                assert row["kernel_outcome"] == "cached" and row["matrix_run_id"] == run_id
                assert row["cache_key"].startswith(f"{v}-tarball-x86_64-")

        # -- run 2: all cache hits, nothing downloaded, no make, no reservation --
        requests_before = len(kernel_org.requests)
        parent2 = run_matrix(kit)
        assert parent2["results"] == kit.SUCCESS
        assert parent2["state_string"].endswith("4 cells: 0 built, 4 cache hits, 0 failed")
        # releases.json is fetched again (versions are resolved at each run's start), nothing else.
        new = kernel_org.requests[requests_before:]
        assert new == [("GET", "/releases.json")]
        for c in cell_builds(kit, parent2):
            assert c["properties"]["kernel_outcome"][0] == "cache-hit"
            ran = step_names(kit, c["buildid"], ran_only=False)
            assert {"cache-lookup", "record"} <= ran and not ran & KERNEL_PHASES
        run2 = queries.matrix_grid(eng, parent2["properties"]["matrix_run_id"][0])["run"]
        assert (run2["built"], run2["cache_hits"], run2["failed"]) == (0, 4, 0)

        # -- run 3: a new 6.15 release appears; the run picks it up at its start --
        kernel_org.add_fake_kernel("6.15.12")
        kernel_org.set_releases([("stable", "6.15.12"), ("longterm", "6.12.44")])
        parent3 = run_matrix(kit)
        assert parent3["state_string"].endswith("4 cells: 2 built, 2 cache hits, 0 failed")
        assert parent3["properties"]["matrix_versions"][0] == ["6.15.12", "6.12.44"]
        assert kernel_org.count(kernel_org.tarball_path("6.15.12")) == 1
        assert kernel_org.count(kernel_org.tarball_path("6.12.44")) == 1
        eng.dispose()
    finally:
        kit.stop()


def test_broken_cell_fails_alone_and_branch_cells_build_the_tip(
    tmp_path: Path, kernel_org: KernelOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel_org.add_fake_kernel("6.12.44")
    # 6.6.103 builds under tiny but not with full preemption (tiny-preempt).
    broken = make_fake_kernel(tmp_path / "broken", git=False)
    main_c = broken / "init" / "main.c"
    main_c.write_text("#ifdef CONFIG_PREEMPT\n#error matrix test: broken under PREEMPT\n#endif\n"
                      + main_c.read_text())
    kernel_org.add_tarball("6.6.103", broken)
    # Pushes of "main" start nothing (branch patterns), so only the matrix builds it.
    kit = start_kit(tmp_path, kernel_org, monkeypatch,
                    ["6.12.44", "6.6.103", "branch:linux/main"], ["tiny", "tiny-preempt"],
                    branches=("release-.*",))
    try:
        tree = make_fake_kernel(tmp_path / "branch-tree")
        sha = kit.push(tree, "main").sha
        parent = run_matrix(kit)
        assert parent["results"] == kit.FAILURE
        assert parent["state_string"].endswith("6 cells: 5 built, 0 cache hits, 1 failed")
        cells = cell_builds(kit, parent)
        assert len(cells) == 6
        failed = [c for c in cells if c["results"] not in (kit.SUCCESS, kit.WARNINGS)]
        assert [(c["properties"]["kernel_version"][0], c["properties"]["profile"][0])
                for c in failed] == [("6.6.103", "tiny-preempt")]
        assert failed[0]["results"] == kit.FAILURE
        make_log = kit.step_log(failed[0]["buildid"], "make")
        assert "matrix test: broken under PREEMPT" in make_log

        # Branch cells ran on the push builders, at the tip resolved when the run started.
        branch_cells = [c for c in cells if c["properties"]["kernel_version"][0].startswith("branch:")]
        assert {c["properties"]["buildername"][0] for c in branch_cells} == {
            "linux-tiny", "linux-tiny-preempt"}
        for c in branch_cells:
            assert c["properties"]["got_revision"][0] == sha
            assert c["properties"]["kernel_outcome"][0] == "cached"

        eng = records_engine(kit)
        run_id = parent["properties"]["matrix_run_id"][0]
        grid = queries.matrix_grid(eng, run_id)
        assert (grid["run"]["cells"], grid["run"]["built"], grid["run"]["cache_hits"],
                grid["run"]["failed"]) == (6, 5, 0, 1)
        assert grid["run"]["versions"] == ["6.12.44", "6.6.103", "branch:linux/main"]
        bad = grid["cells"]["6.6.103"]["tiny-preempt"]
        assert bad["kernel_outcome"] == "failed" and bad["result"] == "failure"
        assert "make" in bad["error"]
        assert grid["cells"]["6.6.103"]["tiny"]["kernel_outcome"] == "cached"
        for p in ("tiny", "tiny-preempt"):
            row = grid["cells"]["branch:linux/main"][p]
            assert row["revision"] == sha and row["branch"] == "main"
            assert row["matrix_run_id"] == run_id
        assert grid["other_builds"] == []
        # The grid page shows it.
        import urllib.request

        url = f"{kit.web_url}plugins/ktstr/dash/matrix.html?id={run_id}"
        page = urllib.request.urlopen(url, timeout=10).read().decode()
        assert "6.6.103" in page and "branch:linux/main" in page
        eng.dispose()
    finally:
        kit.stop()


def test_unresolvable_version_fails_its_cells_with_the_key(
    tmp_path: Path, kernel_org: KernelOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    """releases.json has no 6.99 series and the mirror has none: its cell fails, unbuilt."""
    kit = start_kit(tmp_path, kernel_org, monkeypatch, ["6.99"], ["tiny"])
    try:
        parent = run_matrix(kit)
        assert parent["results"] == kit.FAILURE
        assert parent["state_string"].endswith("1 cells: 0 built, 0 cache hits, 1 failed")
        assert cell_builds(kit, parent) == []  # nothing was triggered for it
        log = kit.step_log(parent["buildid"], "resolve", "resolve")
        assert f"releases.json: {kernel_org.releases_url}" in log
        assert "6.99 -> error: '6.99': no tarball found for 6.99.x" in log
        run_id = parent["properties"]["matrix_run_id"][0]
        eng = records_engine(kit)
        cell = queries.matrix_grid(eng, run_id)["cells"]["6.99"]["tiny"]
        eng.dispose()
        assert cell["kernel_outcome"] == "failed"
        assert cell["error"].startswith("'6.99': no tarball found for 6.99.x")
    finally:
        kit.stop()
