"""The matrix's reads of the records: what broke since the previous night (a run's page
against the run before it), and which branches were built lately."""

from __future__ import annotations

import datetime as dt

import pytest

from master import dashboard
from master.records import db, queries

BASE = "http://localhost/plugins/ktstr/dash/"
T0 = dt.datetime(2025, 6, 1, 3, 0, tzinfo=dt.UTC)
MAIN, FEAT = "branch:linux/main", "branch:linux/feat"


def cell(run: int, buildid: int, version: str, profile: str, outcome: str,
         result: str = "success", error: str | None = None) -> dict:
    return {"buildid": buildid, "builder": "linux-" + profile, "kernel_version": version,
            "profile": profile, "kernel_outcome": outcome, "result": result, "error": error,
            "matrix_run_id": run, "started_at": T0, "finished_at": T0}


@pytest.fixture
def runs(tmp_path):
    """Two nights: main/tiny stays green, main/default goes red, feat/tiny recovers."""
    url = f"sqlite:///{tmp_path / 'records.sqlite'}"
    db.upgrade(url)
    eng = db.make_engine(url)
    grid = {"versions": [MAIN, FEAT], "profiles": ["tiny", "default"]}
    first = queries.start_matrix_run(eng, **grid, started_at=T0)
    for i, (v, p, outcome, result) in enumerate([
        (MAIN, "tiny", "cached", "success"), (MAIN, "default", "cache-hit", "success"),
        (FEAT, "tiny", "failed", "failure"), (FEAT, "default", "failed", "failure"),
    ]):
        queries.insert_build(eng, cell(first, 100 + i, v, p, outcome, result))
    queries.finish_matrix_run(eng, first)
    second = queries.start_matrix_run(eng, **grid, started_at=T0 + dt.timedelta(days=1))
    for i, (v, p, outcome, result) in enumerate([
        (MAIN, "tiny", "cache-hit", "success"), (MAIN, "default", "failed", "failure"),
        (FEAT, "tiny", "cached", "success"), (FEAT, "default", "failed", "failure"),
    ]):
        queries.insert_build(eng, cell(second, 200 + i, v, p, outcome, result,
                                       error="make-failed: sched_ext.o" if result != "success"
                                       else None))
    queries.finish_matrix_run(eng, second)
    yield url, eng, first, second
    eng.dispose()


def test_broke_is_green_the_night_before_and_red_now(runs):
    _, eng, first, second = runs
    grid = queries.matrix_grid(eng, second)
    assert grid["previous"] == first
    assert grid["broke"] == [(MAIN, "default")]  # not feat/default: it was red already
    assert grid["fixed"] == [(FEAT, "tiny")]
    # The first night has nothing to compare with.
    first_grid = queries.matrix_grid(eng, first)
    assert first_grid["previous"] is None and first_grid["broke"] == []
    # What the finish step asks the records service for.
    assert queries.matrix_changes(eng, second) == {
        "previous": first, "broke": [[MAIN, "default"]], "fixed": [[FEAT, "tiny"]]}


def test_the_run_page_says_what_broke_and_marks_the_cell(runs):
    url, _, first, second = runs
    client = dashboard.create_app(url).test_client()
    resp = client.get(f"/matrix.html?id={second}", base_url=BASE)
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert f"#/ktstr/matrix?id={first}\"" in html  # the previous run, as a shell route
    assert "1 broke</strong>" in html
    assert f'<code class="broke">{MAIN} x default</code>' in html
    assert f'<code class="fixed">{FEAT} x tiny</code>' in html
    assert f'class="cell broke" data-version="{MAIN}" data-profile="default"' in html
    assert f'class="cell" data-version="{FEAT}" data-profile="default"' in html
    first_page = client.get(f"/matrix.html?id={first}", base_url=BASE).get_data(as_text=True)
    assert "No previous run to compare with." in first_page


def test_recent_branches_are_branches_built_lately_but_not_by_the_matrix(tmp_path):
    url = f"sqlite:///{tmp_path / 'records.sqlite'}"
    db.upgrade(url)
    eng = db.make_engine(url)
    try:
        run = queries.start_matrix_run(eng, versions=[MAIN], profiles=["tiny"])
        now = T0 + dt.timedelta(days=30)
        for i, (branch, age, matrix_run) in enumerate([
            ("fresh", 1, None), ("fresh", 2, None), ("edge", 13.9, None), ("stale", 15, None),
            ("kept-alive-by-the-matrix", 1, run),
        ]):
            queries.insert_build(eng, {
                "buildid": i + 1, "branch": branch, "repository": "/srv/linux.git",
                "result": "success", "matrix_run_id": matrix_run,
                "started_at": now - dt.timedelta(days=age)})
        since = now - dt.timedelta(days=14)
        assert queries.recent_branches(eng, since) == [
            ("/srv/linux.git", "edge"), ("/srv/linux.git", "fresh")]
        assert queries.recent_branches(eng, since.timestamp()) == [
            ("/srv/linux.git", "edge"), ("/srv/linux.git", "fresh")]
    finally:
        eng.dispose()
