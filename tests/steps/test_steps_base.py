"""Shared fixtures for the step tests, and the behaviour every ktstr-ci step shares."""

from __future__ import annotations

from typing import Any

from buildbot import config
from buildbot.process.properties import Properties
from buildbot.process.results import FAILURE, SUCCESS
from twisted.internet import defer
from twisted.trial import unittest

from ktstr_steps.buildsteps import Validate
from ktstr_steps.buildsteps.base import (
    RESULT_LOG,
    branch_dir,
    holder_name,
    parse_json_object,
    safe_name,
    tree_path,
)
from ktstr_steps.keys import crc32_hex
from tests.support.steps_harness import (
    HOLDER,
    STATE,
    TREE,
    KtstrStepMixin,
    ktstr,
)


class TestNames(unittest.TestCase):
    def test_branch_dir_is_safe_and_unique(self) -> None:
        self.assertEqual(branch_dir("main"), f"main-{crc32_hex(b'main')}")
        self.assertEqual(branch_dir("feat/x y;rm"), f"feat_x_y_rm-{crc32_hex(b'feat/x y;rm')}")
        # Same sanitised text, different branches: the CRC keeps them apart.
        self.assertNotEqual(branch_dir("a/b"), branch_dir("a_b"))
        self.assertNotIn(branch_dir(".."), ("..", "."))
        self.assertNotIn("/", branch_dir("../../etc"))

    def test_safe_name_keeps_clean_names(self) -> None:
        self.assertEqual(safe_name("kernel-x86_64.1"), "kernel-x86_64.1")
        self.assertEqual(safe_name("a b"), f"a_b-{crc32_hex(b'a b')}")

    def _render(self, renderable: Any, **props: Any) -> Any:
        p = Properties()
        for k, v in props.items():
            p.setProperty(k, v, "Test")
        d = renderable.getRenderingFor(p)
        return self.successResultOf(d) if isinstance(d, defer.Deferred) else d

    def test_holder_name_from_builder_and_number(self) -> None:
        self.assertEqual(self._render(holder_name, buildername="kernel", buildnumber=7), HOLDER)
        name = self._render(holder_name, buildername="linux 6.12/tiny", buildnumber=3)
        self.assertRegex(name, r"^[A-Za-z0-9_.-]{1,100}$")
        self.assertTrue(name.endswith("-3"))

    def test_tree_path_under_tree_store(self) -> None:
        self.assertEqual(
            self._render(tree_path, tree_store="/srv/trees", branch="main", buildername="kernel"),
            TREE,
        )
        # Two builders (profiles) never share a tree, whatever the branch.
        self.assertNotEqual(
            self._render(tree_path, tree_store="/srv/trees", branch="main", buildername="tiny"),
            TREE,
        )
        self.assertIsNone(self._render(tree_path, branch="main"))

    def test_parse_json_object(self) -> None:
        self.assertEqual(parse_json_object('{"a": 1}\n'), ({"a": 1}, None))
        # Pretty-printed, after stray output: the last object wins.
        self.assertEqual(parse_json_object('noise\n{"a": 1}\n{\n  "b": 2\n}\n'), ({"b": 2}, None))
        self.assertEqual(parse_json_object(""), (None, "no JSON"))
        self.assertEqual(parse_json_object("{not json"), (None, "malformed JSON"))
        self.assertEqual(parse_json_object("[1, 2]"), (None, "malformed JSON"))


class TestCommonBehaviour(KtstrStepMixin, unittest.TestCase):
    """What every KtstrCiStep does, shown on the smallest one (validate)."""

    def test_missing_json_fails_with_stderr_tail(self) -> None:
        self.setup_ktstr_step(Validate())
        self.expect_commands(
            ktstr("phase", "validate", "--state", STATE, "--json")
            .stderr("Traceback (most recent call last):\nImportError: no module ktstr_steps")
            .exit(1)
        )
        self.expect_outcome(
            result=FAILURE,
            state_string="ktstr-ci phase validate printed no JSON: "
            "ImportError: no module ktstr_steps (failure)",
        )
        return self.run_step()

    def test_malformed_json_fails(self) -> None:
        self.setup_ktstr_step(Validate())
        self.expect_commands(
            ktstr("phase", "validate", "--state", STATE, "--json")
            .log(RESULT_LOG, stdout='{"missing": [')
            .exit(0)
        )
        self.expect_outcome(
            result=FAILURE, state_string="ktstr-ci phase validate printed malformed JSON (failure)"
        )
        return self.run_step()

    def test_nonzero_exit_reports_json_error(self) -> None:
        self.setup_ktstr_step(Validate())
        self.expect_commands(
            ktstr("phase", "validate", "--state", STATE, "--json")
            .stderr("ktstr-ci: error: read /srv/trees/x/.config\n")
            .answer({"ok": False, "errors": [{"kind": "io", "message": "read .config"}]})
            .exit(1)
        )
        self.expect_outcome(result=FAILURE, state_string="validate failed: read .config (failure)")
        return self.run_step()

    def test_ok_false_is_a_failure_even_with_exit_zero(self) -> None:
        self.setup_ktstr_step(Validate())
        self.expect_commands(
            ktstr("phase", "validate", "--state", STATE, "--json")
            .answer({"ok": False, "errors": [{"kind": "x", "message": "boom"}]})
            .exit(0)
        )
        self.expect_outcome(result=FAILURE, state_string="validate failed: boom (failure)")
        return self.run_step()

    def test_ktstr_ci_path_configurable(self) -> None:
        self.setup_ktstr_step(Validate(ktstr_ci="/opt/ktstr-ci/bin/ktstr-ci"))
        self.expect_commands(
            ktstr("phase", "validate", "--state", STATE, "--json",
                  ktstr_ci="/opt/ktstr-ci/bin/ktstr-ci")
            .answer({"missing": []})
            .exit(0)
        )
        self.expect_outcome(result=SUCCESS, state_string="config valid")
        return self.run_step()

    def test_phase_seconds_property(self) -> None:
        self.setup_ktstr_step(Validate())
        self.build.setProperty("phase_seconds", {"reserve": 0.5}, "Reserve")
        self.expect_commands(
            ktstr("phase", "validate", "--state", STATE, "--json")
            .answer({"missing": []})
            .exit(0)
        )
        self.expect_outcome(result=SUCCESS)
        self.expect_property("phase_seconds", {"reserve": 0.5, "validate": 0.0})
        return self.run_step()

    def test_bad_ktstr_ci_is_config_error(self) -> None:
        with self.assertRaisesConfigError("ktstr_ci must not be empty"):
            Validate(ktstr_ci="")
        with self.assertRaisesConfigError("ktstr_ci must be"):
            Validate(ktstr_ci=["ktstr-ci"])

    def test_command_argument_is_refused(self) -> None:
        with self.assertRaisesConfigError("invalid Validate argument command"):
            Validate(command=["sh", "-c", "true"])

    def test_unknown_argument_is_refused(self) -> None:
        self.assertRaises(config.ConfigErrors, Validate, bogus=1)
