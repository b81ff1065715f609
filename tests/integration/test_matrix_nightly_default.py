"""The nightly matrix of the embedded default on a real service: recently pushed branches
x (push profiles + default), nothing downloaded, an unreachable kernel.org failing only its
own cells.

Real master, two LLC-pinned workers, the real ``master.cfg``, fake kernel trees pushed to
the hosted bare repository. The run is started with the ``force-matrix`` button, which
requests exactly the build the ``nightly-matrix`` scheduler requests at its time of day.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from master.records import db as records_db
from master.records import queries
from tests.support.fakekernel import make_fake_kernel
from tests.support.servicekit import ServiceKit

# Nothing listens on the discard port: kernel.org is "unreachable".
DEAD_RELEASES = "http://127.0.0.1:9/releases.json"


def run_matrix(kit: ServiceKit, timeout: float = 600) -> dict:
    """Press the force-matrix button; wait for the parent build; return it (with props)."""
    status, body = kit.api_status(
        "POST", "forceschedulers/force-matrix",
        {"jsonrpc": "2.0", "method": "force", "id": 1,
         "params": {"builderNames": ["matrix"], "reason": "test"}},
        login=True,
    )  # fmt: skip
    assert status == 200, body
    parent = kit.wait_for(lambda: next(iter(kit.builds(builder="matrix")), None), 60,
                          "the matrix parent build")
    done = kit.wait_finished(parent["buildid"], timeout)
    return kit.api(f"builds/{done['buildid']}", property="*")["builds"][0]


def cell_builds(kit: ServiceKit, parent: dict) -> list[dict]:
    """The builds whose buildset names the parent as parent_buildid."""
    out = []
    for b in kit.api("builds", property="*", order="buildid")["builds"]:
        [req] = kit.api(f"buildrequests/{b['buildrequestid']}")["buildrequests"]
        [bset] = kit.api(f"buildsets/{req['buildsetid']}")["buildsets"]
        if bset["parent_buildid"] == parent["buildid"]:
            out.append(b)
    return out


def test_default_matrix_builds_pushed_branches_under_push_profiles_and_default(
    tmp_path: Path,
) -> None:
    table = "\n".join([
        "", "[matrix]",
        # The default rows plus one kernel.org entry whose releases.json does not answer.
        'versions = ["recent-branches", "latest-stable"]',
        f"releases_url = {json.dumps(DEAD_RELEASES)}",
        f"download_cache = {json.dumps(str(tmp_path / 'downloads'))}", "",
    ])
    kit = ServiceKit(tmp_path, llc_groups=[[0], [1]], profiles=("tiny",),
                     extra_toml=table).start()
    try:
        assert kit.settings.matrix.enabled and kit.settings.matrix.profiles == ("tiny", "default")
        tips = {}
        for branch in ("feature-a", "feature-b"):
            tree = make_fake_kernel(tmp_path / branch)
            tips[branch] = kit.push(tree, branch).sha
            pushed = kit.wait_build(branch, timeout=60)
            assert kit.wait_finished(pushed["buildid"], 300)["results"] == kit.SUCCESS

        parent = run_matrix(kit)
        props = {k: v[0] for k, v in parent["properties"].items()}
        rows = ["branch:linux/feature-a", "branch:linux/feature-b", "latest-stable"]
        assert props["matrix_versions"] == rows
        # The two latest-stable cells failed; the four branch cells built or were found.
        assert parent["results"] == kit.FAILURE
        assert parent["state_string"].endswith("6 cells: 2 built, 2 cache hits, 2 failed")

        cells = cell_builds(kit, parent)
        seen = {(c["properties"]["branch"][0], c["properties"]["profile"][0]): c for c in cells}
        assert set(seen) == {(b, p) for b in tips for p in ("tiny", "default")}
        for (branch, profile), c in seen.items():
            assert c["results"] == kit.SUCCESS, kit.build_steps(c["buildid"])
            assert c["properties"]["got_revision"][0] == tips[branch]
            outcome = c["properties"]["kernel_outcome"][0]
            # tiny was built by the push: a cache hit; default is built by the night only.
            assert outcome == ("cache-hit" if profile == "tiny" else "cached"), (branch, outcome)

        eng = records_db.make_engine(kit.settings.databases.records)
        try:
            grid = queries.matrix_grid(eng, props["matrix_run_id"])
        finally:
            eng.dispose()
        assert grid["run"]["versions"] == rows
        assert grid["run"]["profiles"] == ["tiny", "default"]
        for profile in ("tiny", "default"):
            failed = grid["cells"]["latest-stable"][profile]
            assert failed["kernel_outcome"] == "failed"
            # One line that names the mirror's URL and the setting to change.
            assert "\n" not in failed["error"] and DEAD_RELEASES in failed["error"]
            assert "matrix.releases_url" in failed["error"]
            for branch in tips:
                assert grid["cells"][f"branch:linux/{branch}"][profile]["result"] == "success"

        page = urllib.request.urlopen(
            f"{kit.web_url}plugins/ktstr/dash/matrix.html?id={props['matrix_run_id']}",
            timeout=30).read().decode()
        assert 'data-version="branch:linux/feature-b" data-profile="default"' in page
        assert DEAD_RELEASES in page
    finally:
        kit.stop()
