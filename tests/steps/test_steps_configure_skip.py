"""Configure step: a configure the stamp skipped says so in its summary."""

from __future__ import annotations

from buildbot.process.results import SUCCESS
from twisted.trial import unittest

from ktstr_steps.buildsteps import Configure
from tests.support.steps_harness import HOLDER, STATE, KtstrStepMixin, ktstr


def configure():
    return ktstr("phase", "configure", "--state", STATE, "--holder", HOLDER, "--json")


class TestConfigureSkipped(KtstrStepMixin, unittest.TestCase):
    def test_unchanged_inputs_skipped(self) -> None:
        self.setup_ktstr_step(Configure())
        self.expect_commands(configure().answer({
            "configured": False, "skipped": "unchanged inputs", "overrides": [],
            "dropped": []}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string="unchanged inputs, skipped")
        self.expect_property("config_dropped", 0)
        return self.run_step()

    def test_not_skipped_is_configured(self) -> None:
        self.setup_ktstr_step(Configure())
        self.expect_commands(configure().answer({
            "configured": True, "skipped": None, "overrides": [], "dropped": []}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string="configured")
        return self.run_step()
