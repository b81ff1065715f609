"""What changed and what got worse: config diff, new warnings, alert rules, the migration, the
record step's WARNINGS on an alert."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from buildbot.process.results import SUCCESS, WARNINGS
from sqlalchemy import text
from twisted.internet import defer
from twisted.trial import unittest

from ktstr_steps.buildsteps import Record
from master.records import db, queries
from master.records.compare import AlertRules, alerts, compare, config_diff, insert_compared
from master.records.db import InvalidRecord
from master.records.rows import row_from_result
from tests.support.steps_harness import STATE, KtstrStepMixin, ktstr

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
W1 = {"file": "init/main.c", "line": 12, "message": "unused variable 'x'"}
W2 = {"file": "kernel/sched/ext.c", "line": 40, "message": "unused variable 'y'"}


def built(n: int, **kw: Any) -> dict[str, Any]:
    row = {"buildid": n, "branch": "topic", "profile": "tiny", "kernel_outcome": "cached",
           "result": "success", "started_at": T0 + dt.timedelta(hours=n),
           "config_symbols": {"SMP": "y", "HZ": "250"}, "warnings": [W1],
           "bzimage_bytes": 1_000_000, "make_s": 100.0}
    row.update(kw)
    return row


# -- pure rules ------------------------------------------------------------------------


def test_config_diff_added_removed_changed():
    old = {"SMP": "y", "HZ": "250", "NUMA": "y"}
    new = {"SMP": "y", "HZ": "1000", "PREEMPT": "y"}
    assert config_diff(old, new) == {
        "added": {"PREEMPT": "y"}, "removed": {"NUMA": "y"}, "changed": {"HZ": ["250", "1000"]}}
    assert config_diff(old, old) == {"added": {}, "removed": {}, "changed": {}}
    assert config_diff(None, new) is None and config_diff(old, None) is None


def test_new_warnings_alert():
    assert alerts({}, [{"file": "a.c", "message": "m"}], [], AlertRules()) == ["1 new warning"]
    two = [{"file": "a.c", "message": "m"}, {"file": "b.c", "message": "m"}]
    assert alerts({}, two, [], AlertRules()) == ["2 new warnings"]
    assert alerts({}, two, [], AlertRules(new_warnings=False)) == []
    assert alerts({}, [], [], AlertRules()) == []


def test_bzimage_growth_against_the_median():
    history = [{"bzimage_bytes": b} for b in (1_000_000, 1_000_000, 5_000_000)]  # median 1 MB
    [alert] = alerts({"bzimage_bytes": 1_030_000}, None, history, AlertRules())
    assert alert.startswith("bzImage size up 3.0% (1,030,000 bytes against the median "
                            "1,000,000 bytes of the branch's last 3 builds")
    assert alerts({"bzimage_bytes": 1_015_000}, None, history, AlertRules()) == []
    assert alerts({"bzimage_bytes": 2_000_000}, None, history,
                  AlertRules(bzimage_growth_pct=None)) == []


def test_make_time_growth_uses_only_the_last_window_builds():
    recent = [{"make_s": 100.0}] * 10
    older = [{"make_s": 10.0}] * 20  # beyond the window: ignored
    [alert] = alerts({"make_s": 130.0}, None, recent + older, AlertRules())
    assert alert.startswith("make time up 30.0% (130.0s against the median 100.0s of the "
                            "branch's last 10 builds; alert above 25%")
    assert alerts({"make_s": 120.0}, None, recent, AlertRules()) == []


def test_make_time_growth_below_the_noise_floor_is_no_alert():
    # 0.2 s → 0.3 s is +50 % but timer noise: no alert under the 30 s floor...
    assert alerts({"make_s": 0.3}, None, [{"make_s": 0.2}], AlertRules()) == []
    assert alerts({"make_s": 29.0}, None, [{"make_s": 10.0}], AlertRules()) == []
    # ... at the floor it is one, and a floor of 0 alerts on the percentage alone.
    [alert] = alerts({"make_s": 40.0}, None, [{"make_s": 10.0}], AlertRules())
    assert alert.startswith("make time up 300.0%")
    [alert] = alerts({"make_s": 0.3}, None, [{"make_s": 0.2}],
                     AlertRules(make_time_min_seconds=0))
    assert alert.startswith("make time up 50.0%")


def test_compare_needs_a_build_and_a_previous_one():
    assert compare(built(2, config_symbols=None, warnings=None), [built(1)], AlertRules()) == {}
    assert compare(built(1), [], AlertRules()) == {}
    out = compare(built(2, warnings=[W1, W2], config_symbols={"SMP": "y"}), [built(1)],
                  AlertRules())
    assert out["config_diff"] == {"added": {}, "removed": {"HZ": "250"}, "changed": {}}
    assert out["new_warnings"] == [{"file": W2["file"], "message": W2["message"]}]
    assert out["alerts"] == ["1 new warning"]


# -- in the database ---------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'records.sqlite'}"
    db.upgrade(url)
    eng = db.make_engine(url)
    yield eng
    eng.dispose()


def test_second_build_of_a_branch_is_compared_with_the_first(engine):
    first = queries.get_build(engine, id=insert_compared(engine, built(1)))
    assert (first["config_diff"], first["new_warnings"], first["alerts"]) == (None, None, None)
    # Another profile and another branch are never the baseline.
    insert_compared(engine, built(2, profile="default", warnings=[]))
    insert_compared(engine, built(3, branch="other", warnings=[]))
    rid = insert_compared(engine, built(4, warnings=[{**W1, "line": 99}, W2],
                                        config_symbols={"SMP": "y", "HZ": "1000"},
                                        bzimage_bytes=1_100_000))
    row = queries.get_build(engine, id=rid)
    assert row["new_warnings"] == [{"file": W2["file"], "message": W2["message"]}]
    assert row["config_diff"]["changed"] == {"HZ": ["250", "1000"]}
    assert row["alerts"][0] == "1 new warning"
    assert row["alerts"][1].startswith("bzImage size up 10.0%")
    # Written again (the record step's retry): not compared with itself.
    again = queries.get_build(engine, id=insert_compared(engine, built(4, warnings=[W1, W2])))
    assert again["id"] == rid and again["alerts"] == ["1 new warning"]


def test_a_cache_hit_is_not_compared(engine):
    insert_compared(engine, built(1))
    hit = built(2, kernel_outcome="cache-hit", config_symbols=None, warnings=None)
    row = queries.get_build(engine, id=insert_compared(engine, hit))
    assert row["alerts"] is None and row["config_diff"] is None


def test_json_columns_refuse_the_wrong_shape(engine):
    with pytest.raises(InvalidRecord, match="identity: expected a JSON object"):
        insert_compared(engine, built(1, identity=["x"]))
    with pytest.raises(InvalidRecord, match="alerts: expected a list of texts"):
        insert_compared(engine, built(1, alerts=[1]))
    with pytest.raises(InvalidRecord, match="warnings: expected a list of JSON objects"):
        insert_compared(engine, built(1, warnings="w"))


def test_row_from_result_carries_identity_and_outputs():
    result = {"outcome": "cached", "identity": {"commit": "1a2b3c4"}, "explanation": "why",
              "config_dropped": [{"symbol": "X", "requested": "y", "effective": "n",
                                  "reason": "depends on Y (=n)"}],
              "build_warnings": [W1], "bzimage_bytes": 5, "warnings": ["a human line"]}
    row = row_from_result(result, buildid=1)
    assert row["identity"] == {"commit": "1a2b3c4"} and row["explanation"] == "why"
    assert row["warnings"] == [W1]  # make's warnings, not the human lines
    assert row["config_dropped"][0]["reason"] == "depends on Y (=n)"


def test_upgrade_from_the_previous_head_keeps_old_rows_readable(tmp_path):
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    eng = db.make_engine(url)
    try:
        cfg = db._alembic_config()
        with eng.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0002_git_names_whole")
        with eng.begin() as conn:
            conn.execute(text(
                "INSERT INTO kernel_builds (buildid, branch, profile, kernel_outcome, result, "
                "make_s, make_warnings) VALUES (1, 'topic', 'tiny', 'cached', 'success', 30.5, 2)"))
        assert db.upgrade(eng) == "0003_build_identity"
        old = queries.get_build(eng, buildid=1)
        assert (old["branch"], old["make_s"], old["make_warnings"]) == ("topic", 30.5, 2)
        for col in ("identity", "config_overrides", "config_dropped", "config_symbols",
                    "bzimage_bytes", "vmlinux_bytes", "vmlinux_stripped_bytes", "warnings",
                    "explanation", "config_diff", "new_warnings", "alerts"):
            assert old[col] is None, col
        assert queries.jsonable(old)["identity"] is None
        # The old row is a build without data to compare: the new one has no baseline.
        rid = insert_compared(eng, built(2, started_at=T0 + dt.timedelta(days=1)))
        assert queries.get_build(eng, id=rid)["alerts"] is None
    finally:
        eng.dispose()


# -- the record step ---------------------------------------------------------------------

RESULT = {
    "ok": True, "outcome": "cached", "cache_key": "k", "profile": "tiny", "git_hash": "1a2b3c4",
    "identity": {"commit": "1a2b3c4", "profile": "tiny"},
    "explanation": "first build of this commit and profile",
    "config_overrides": [], "config_dropped": [],
    "config_symbols": {"SMP": "y"}, "build_warnings": [W1, W2],
    "bzimage_bytes": 1000, "vmlinux_bytes": 9000, "vmlinux_stripped_bytes": 3000,
    "warnings": [], "errors": [], "phases": {"lookup": 0.1, "make": 3.0},
}


class AlertingRecords:
    """A records service whose written row tripped alerts."""

    def __init__(self, found: list[str]) -> None:
        self.rows: list[dict[str, Any]] = []
        self.found = found

    def record(self, row: dict[str, Any]) -> defer.Deferred[int]:
        self.rows.append(dict(row))
        return defer.succeed(7)

    def start_matrix_run(self, **kwargs: Any) -> defer.Deferred[int]:
        return defer.succeed(1)

    def finish_matrix_run(self, run_id: int, **kwargs: Any) -> defer.Deferred[dict]:
        return defer.succeed({})

    def get_row(self, rowid: int) -> defer.Deferred[dict[str, Any]]:
        return defer.succeed({"id": rowid, "alerts": self.found})


def summary():
    return ktstr("phase", "summary", "--state", STATE, "--json")


class TestRecordAlerts(KtstrStepMixin, unittest.TestCase):
    def test_row_carries_identity_and_an_alert_ends_warnings(self) -> None:
        records = AlertingRecords(["2 new warnings"])
        self.setup_ktstr_step(Record(records=records), phase_seconds={"lookup": 0.1})
        self.expect_commands(summary().answer(RESULT).exit(0))
        self.expect_outcome(result=WARNINGS,
                            state_string="recorded row 7 (cached); alert: 2 new warnings "
                                         "(warnings)")
        self.expect_property("alerts", ["2 new warnings"])
        self.expect_log_file("alerts", "2 new warnings\n")
        d = self.run_step()

        @d.addCallback
        def check(_: object) -> None:
            first, again = records.rows
            self.assertEqual(first["identity"], RESULT["identity"])
            self.assertEqual(first["warnings"], [W1, W2])
            self.assertEqual(first["explanation"], RESULT["explanation"])
            self.assertEqual((first["bzimage_bytes"], first["vmlinux_stripped_bytes"]),
                             (1000, 3000))
            self.assertEqual(first["config_symbols"], {"SMP": "y"})
            self.assertEqual(first["result"], "success")
            # Written again so the row says how the build ends.
            self.assertEqual(again["result"], "warnings")

        return d

    def test_no_alert_is_success(self) -> None:
        records = AlertingRecords([])
        self.setup_ktstr_step(Record(records=records), phase_seconds={"lookup": 0.1})
        self.expect_commands(summary().answer(RESULT).exit(0))
        self.expect_outcome(result=SUCCESS, state_string="recorded row 7 (cached)")
        return self.run_step()

    def test_a_cache_hit_has_no_explanation(self) -> None:
        records = AlertingRecords([])
        self.setup_ktstr_step(Record(records=records), phase_seconds={"lookup": 0.1},
                              rebuild_explanation="stale")
        hit = {"ok": True, "outcome": "cache-hit", "cache_key": "k", "errors": [],
               "phases": {"lookup": 0.1}}
        self.expect_commands(summary().answer(hit).exit(0))
        self.expect_outcome(result=SUCCESS)
        d = self.run_step()
        d.addCallback(lambda _: self.assertNotIn("explanation", records.rows[0]))
        return d
