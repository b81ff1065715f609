"""A step's log reads like a terminal: which kind of line lands in which stream.

``ktstr-ci --result-file FILE ...`` (what every step runs) sends ordinary
output to stdout, only warnings and errors to stderr (the lines Buildbot
marks), and progress events and the JSON answer to FILE as JSON lines. The
first tests run the real command on the fake kernel tree; the step tests show
the step keeping progress out of its log and in its status line.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from buildbot.process.results import SUCCESS
from twisted.trial import unittest

from ktstr_steps.buildsteps import KernelMake
from tests.support.fakekernel import make_fake_kernel
from tests.support.steps_harness import HOLDER, RESULT_LOG, STATE, KtstrStepMixin, ktstr


def run_ktstr(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ktstr-ci", *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ), timeout=300, stdin=subprocess.DEVNULL)


def result_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_kernel_build_routes_each_kind_of_line(tmp_path: Path) -> None:
    src = make_fake_kernel(tmp_path / "linux")
    frag = tmp_path / "warn.kconfig"
    frag.write_text("CONFIG_KTSTR_FAKE_WARN=y\n")
    result = tmp_path / "result.json"
    p = run_ktstr("--result-file", str(result), "kernel", "build", "--source", str(src),
                  "--extra-kconfig", str(frag), "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    # Ordinary make output and our notes: stdout, as on a terminal.
    assert "  CC      init/main.o" in p.stdout
    assert "✓ Kernel cached:" in p.stdout
    # The real gcc warning, and nothing ordinary, on stderr.
    assert "init/main.c" in p.stderr and "warning: unused variable" in p.stderr
    assert "  CC " not in p.stderr
    # Progress and JSON only in the result file; the answer is its last line.
    assert "progress" not in p.stdout + p.stderr
    assert "{" not in p.stdout
    events = result_lines(result)
    assert events[-1]["outcome"] == "cached" and events[-1]["make_warnings"] == 1
    phases = {e["progress"]["phase"] for e in events[:-1]}
    assert "make" in phases, events
    assert all(set(e) == {"progress"} for e in events[:-1])


def test_without_result_file_the_terminal_route_is_unchanged(tmp_path: Path) -> None:
    src = make_fake_kernel(tmp_path / "linux")
    p = run_ktstr("kernel", "build", "--source", str(src), "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["outcome"] == "cached"
    assert "  CC      init/main.o" in p.stderr
    assert "ktstr-ci: progress: make: 1 step, first build of this profile: no estimate" \
        in p.stderr


def test_failure_answer_goes_to_the_result_file(tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    result.write_text('{"stale": true}\n')
    p = run_ktstr("--result-file", str(result), "phase", "validate", "--state",
                  str(tmp_path / "missing.json"), "--json", cwd=tmp_path)
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr.startswith("ktstr-ci: error: build state ")
    (answer_obj,) = result_lines(result)  # the stale content is gone
    assert answer_obj["ok"] is False and answer_obj["errors"][0]["kind"] == "no-state"


def test_replacing_a_same_second_same_size_file_still_changes_its_stat(tmp_path: Path) -> None:
    # Buildbot's worker sends a watched file only when (ctime, mtime, size), in
    # whole seconds, differ from the file it found before the command started.
    result = tmp_path / "result.json"
    args = ("--result-file", str(result), "phase", "validate", "--state",
            str(tmp_path / "missing.json"), "--json")
    run_ktstr(*args, cwd=tmp_path)
    before = result.stat()
    run_ktstr(*args, cwd=tmp_path)
    after = result.stat()
    assert (int(before.st_ctime), int(before.st_mtime), before.st_size) != (
        int(after.st_ctime), int(after.st_mtime), after.st_size)


class TestStepLog(KtstrStepMixin, unittest.TestCase):
    def make(self):
        return ktstr("phase", "make", "--state", STATE, "--holder", HOLDER, "--json")

    def test_progress_in_status_line_never_in_the_log(self) -> None:
        step = self.setup_ktstr_step(KernelMake())
        seen = []
        update = step.updateSummary

        def spy() -> None:
            seen.append(step.getCurrentSummary())
            update()

        self.patch(step, "updateSummary", spy)
        progress = [json.dumps({"progress": {"phase": "make", "text": t}}) + "\n"
                    for t in ("[1200/5000] CC kernel/fork.o", "[2400/5000] LD vmlinux")]
        self.expect_commands(
            self.make()
            .stdout("  CC      kernel/fork.o\n")
            .log(RESULT_LOG, stdout=progress[0])
            .stderr("kernel/fork.c:1:1: warning: unused variable 'x'\n")
            .stdout("  LD      vmlinux\n")
            .log(RESULT_LOG, stdout=progress[1])
            .answer({"jobs": 2, "warnings": 1, "errors": 0,
                                            "failed_target": None, "seconds": 1.0})
            .exit(0)
        )
        self.expect_outcome(result=1, state_string="built (-j2); 1 warning (warnings)")
        self.expect_log_file("stdio", "  CC      kernel/fork.o\n  LD      vmlinux\n")
        self.expect_log_file_stderr("stdio", "kernel/fork.c:1:1: warning: unused variable 'x'\n")
        d = self.run_step()

        @d.addCallback
        def check(_: object) -> None:
            # seen[0] is startStep's own update, before any output.
            self.assertEqual(seen[1:3], [
                {"step": "make [1200/5000] CC kernel/fork.o"},
                {"step": "make [2400/5000] LD vmlinux"},
            ])

        return d

    def test_a_progress_line_on_stdout_is_only_output(self) -> None:
        # An old-style progress line in the log is a line like any other: the
        # status line follows the result file's events only.
        step = self.setup_ktstr_step(KernelMake())
        self.expect_commands(
            self.make()
            .stdout("ktstr-ci: progress: make: 3 build steps\n")
            .answer({"jobs": 2, "warnings": 0, "errors": 0,
                                            "failed_target": None, "seconds": 1.0})
            .exit(0)
        )
        self.expect_outcome(result=SUCCESS, state_string="built (-j2)")
        d = self.run_step()
        d.addCallback(lambda _: self.assertIsNone(step.progress_text))
        return d


def test_unwritable_result_file_is_one_clear_line(tmp_path: Path) -> None:
    p = run_ktstr("--result-file", str(tmp_path / "no-such-dir" / "r.json"), "phase", "validate",
                  "--state", str(tmp_path / "s.json"), "--json", cwd=tmp_path)
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr == (f"ktstr-ci: error: --result-file {tmp_path / 'no-such-dir' / 'r.json'}: "
                        "No such file or directory (os error 2)\n")
