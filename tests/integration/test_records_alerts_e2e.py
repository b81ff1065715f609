"""A real master and worker: the second build of a branch brings a new gcc warning, and the
build says so — WARNINGS, the alert in the record step's summary and in its records row,
with the rebuild explained and the whole identity recorded."""

from __future__ import annotations

import pytest

from master.records import db as records_db
from master.records import queries
from tests.support.fakekernel import C_FILES, tree_files
from tests.support.servicekit import ServiceKit

WARNING_LINE = "\tint ktstr_new_unused;\n"


def row_of(kit: ServiceKit, buildid: int) -> dict:
    engine = records_db.make_engine(kit.settings.databases.records, must_exist=True)
    try:
        row = queries.get_build(engine, buildid=buildid)
    finally:
        engine.dispose()
    assert row is not None, f"no records row for build {buildid}"
    return row


def steps(kit: ServiceKit, buildid: int) -> dict[str, dict]:
    return {s["name"]: s for s in kit.build_steps(buildid)}


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory):
    with ServiceKit(tmp_path_factory.mktemp("alerts"), llc_groups=[[0]], profiles=("tiny",)) as k:
        yield k


def test_second_build_with_a_new_warning_ends_warnings_with_the_alert(kit: ServiceKit):
    tree = kit.make_tree(tree_files(), path=kit.root / "src" / "alerts")
    first_push = kit.push(tree, "topic")
    first = kit.wait_finished(kit.wait_build("topic", timeout=30)["buildid"], timeout=300)
    assert first["results"] == kit.SUCCESS, kit.build_steps(first["buildid"])
    row1 = row_of(kit, first["buildid"])
    assert row1["explanation"] == "first build of this commit and profile"
    assert row1["identity"]["commit"] == first_push.sha[:7]
    assert row1["identity"]["profile"] == "tiny"
    assert row1["identity"]["base_config"]["name"] == "tinyconfig"
    assert row1["warnings"] == [] and row1["alerts"] is None
    assert row1["bzimage_bytes"] > 0 and row1["vmlinux_bytes"] > 0
    assert row1["config_symbols"]["SCHED_CLASS_EXT"] == "y"

    # The next commit on the branch adds an unused variable: gcc warns.
    main_c = C_FILES["init/main.c"].replace("{\n", "{\n" + WARNING_LINE, 1)
    kit.commit(tree, {"init/main.c": main_c}, "add a warning")
    second_push = kit.push(tree, "topic")
    started = kit.wait_build("topic", timeout=30, after_buildid=first["buildid"])
    second = kit.wait_finished(started["buildid"], timeout=300)
    assert second["results"] == kit.WARNINGS, kit.build_steps(second["buildid"])
    by_name = steps(kit, second["buildid"])
    record = by_name["record"]
    assert record["results"] == kit.WARNINGS
    assert "alert: 1 new warning" in record["state_string"], record["state_string"]
    lookup = by_name["cache-lookup"]["state_string"]
    assert f"commit ({first_push.sha[:7]} → {second_push.sha[:7]}, 1 file changed)" in lookup

    row2 = row_of(kit, second["buildid"])
    assert row2["alerts"] == ["1 new warning"]
    assert row2["result"] == "warnings"
    [new] = row2["new_warnings"]
    assert new["file"] == "init/main.c" and "ktstr_new_unused" in new["message"]
    assert any(w["file"] == "init/main.c" and isinstance(w["line"], int)
               for w in row2["warnings"])
    assert row2["config_diff"] == {"added": {}, "removed": {}, "changed": {}}
    assert row2["explanation"].startswith(f"nearest cached entry `{row1['cache_key']}`")
    props = kit.build_properties(second["buildid"])
    assert props["alerts"] == ["1 new warning"]

