"""How far a make is: the estimator, its history file, and the line a terminal and a step show."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from buildbot.process.results import SUCCESS
from twisted.trial import unittest

from ktstr_steps.buildsteps import KernelMake
from ktstr_steps.make_estimate import (
    HISTORY_FILE,
    MakeEstimate,
    MakeHistory,
    format_duration,
    history_path,
    load_history,
    profile_key,
    record_history,
)
from tests.support.fakekernel import make_fake_kernel
from tests.support.steps_harness import HOLDER, STATE, KtstrStepMixin, ktstr

KEY = profile_key("x86_64", "tinyconfig", "0123abcd", None)


def test_estimate_from_the_previous_full_build() -> None:
    est = MakeEstimate(MakeHistory(steps=1530, seconds=400.0, jobs=2), incremental=False, jobs=2)
    # Early on, the previous build's time: 400 s * (1 - 100/1530) = 374 s.
    assert est.text(100, 5.0) == "100/1,530 (7 %), about 6 min left"
    # Past a tenth of the steps, this build's own pace: 412 steps in 60 s.
    assert est.text(412, 60.0) == "412/1,530 (27 %), about 3 min left"
    assert est.text(1530, 300.0) == "1,530/1,530 (100 %), about 5 s left"


def test_more_jobs_than_last_time_shorten_the_early_estimate() -> None:
    est = MakeEstimate(MakeHistory(steps=1000, seconds=600.0, jobs=2), incremental=False, jobs=4)
    assert est.text(0, 0.0) == "0/1,000 (0 %), about 5 min left"


def test_no_guess_without_a_comparable_build() -> None:
    first = MakeEstimate(None, incremental=False, jobs=2)
    assert first.text(412, 30.0) == "412 steps, first build of this profile: no estimate"
    assert first.text(1, 0.1) == "1 step, first build of this profile: no estimate"
    inc = MakeEstimate(MakeHistory(1530, 400.0, 2), incremental=True, jobs=2)
    assert inc.text(12, 3.0) == "12 steps, incremental build: no estimate"
    over = MakeEstimate(MakeHistory(100, 40.0, 2), incremental=False, jobs=2)
    assert over.text(101, 41.0) == (
        "101 steps, more than the 100 of the last full build: no estimate")


def test_format_duration() -> None:
    assert format_duration(0) == "5 s"
    assert format_duration(41) == "40 s"
    assert format_duration(119) == "2 min"
    assert format_duration(3900) == "1 h 05 min"


def test_history_round_trip_per_profile(tmp_path: Path) -> None:
    path = tmp_path / HISTORY_FILE
    assert load_history(KEY, path) is None
    assert record_history(KEY, MakeHistory(1530, 401.5, 2), path)
    other = profile_key("x86_64", "defconfig", "0123abcd", None)
    assert record_history(other, MakeHistory(9000, 3000.0, 8), path)
    assert load_history(KEY, path) == MakeHistory(1530, 401.5, 2)
    assert load_history(other, path) == MakeHistory(9000, 3000.0, 8)
    assert [p.name for p in tmp_path.iterdir()] == [HISTORY_FILE]  # no temp file left


def test_unusable_history_is_no_estimate(tmp_path: Path) -> None:
    path = tmp_path / HISTORY_FILE
    path.write_text("{not json")
    assert load_history(KEY, path) is None
    path.write_text(json.dumps({KEY: {"steps": 0, "seconds": 1, "jobs": 1}}))
    assert load_history(KEY, path) is None
    path.write_text(json.dumps({KEY: {"steps": "many"}}))
    assert load_history(KEY, path) is None
    # An unwritable place is a hint lost, not an error.
    (tmp_path / "file").write_text("")
    assert not record_history(KEY, MakeHistory(1, 1.0, 1), tmp_path / "file" / HISTORY_FILE)


def test_history_lives_in_the_cache_root(isolated_env: Path) -> None:
    assert history_path() == isolated_env / HISTORY_FILE


def _progress_texts(result: Path) -> list[str]:
    lines = [json.loads(x) for x in result.read_text().splitlines()]
    return [e["progress"]["text"] for e in lines if "progress" in e and e["progress"]["phase"]
            == "make"]


def _build(src: Path, result: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ktstr-ci", "--result-file", str(result), "kernel", "build", "--source", str(src),
         *extra, "--json"],
        capture_output=True, text=True, env=dict(os.environ), timeout=300,
        stdin=subprocess.DEVNULL)


def test_second_full_build_of_a_profile_says_how_far(tmp_path: Path, isolated_env: Path) -> None:
    src = make_fake_kernel(tmp_path / "linux")
    copy = tmp_path / "linux2"
    shutil.copytree(src, copy, symlinks=True)
    p = _build(src, tmp_path / "r1.json")
    assert p.returncode == 0, p.stderr
    first = _progress_texts(tmp_path / "r1.json")
    assert first and first[0].endswith("step, first build of this profile: no estimate"), first
    (history,) = json.loads((isolated_env / HISTORY_FILE).read_text()).values()
    assert history["steps"] >= 3 and history["jobs"] >= 1

    # Same profile, another tree (a new branch): a full build with an estimate.
    p = _build(copy, tmp_path / "r2.json", "--force")
    assert p.returncode == 0, p.stderr
    second = _progress_texts(tmp_path / "r2.json")
    assert second[0].startswith(f"1/{history['steps']} ("), second
    assert " left" in second[0]

    # The first tree again, already built: incremental, no guess.
    p = _build(src, tmp_path / "r3.json", "--force")
    assert p.returncode == 0, p.stderr
    assert all("incremental build: no estimate" in t for t in _progress_texts(tmp_path / "r3.json"))


class TestMakeStatusLine(KtstrStepMixin, unittest.TestCase):
    def test_status_line_says_how_far(self) -> None:
        step = self.setup_ktstr_step(KernelMake())
        seen = []
        update = step.updateSummary

        def spy() -> None:
            seen.append(step.getCurrentSummary())
            update()

        self.patch(step, "updateSummary", spy)
        event = {"progress": {"phase": "make", "text": "412/1,530 (27 %), about 2 min left"}}
        self.expect_commands(
            ktstr("phase", "make", "--state", STATE, "--holder", HOLDER, "--json")
            .answer(event)
            .answer({"jobs": 2, "warnings": 0, "errors": 0,
                                            "failed_target": None, "seconds": 1.0})
            .exit(0)
        )
        self.expect_outcome(result=SUCCESS, state_string="built (-j2)")
        d = self.run_step()
        d.addCallback(lambda _: self.assertIn(
            {"step": "make 412/1,530 (27 %), about 2 min left"}, seen))
        return d
