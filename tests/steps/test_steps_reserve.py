"""Reserve and SourceLock: the holder's reservation and the source-tree lock."""

from __future__ import annotations

from buildbot.process.properties import Property
from buildbot.process.results import CANCELLED, FAILURE, SUCCESS
from buildbot.test.fake.connection import FakeConnection
from twisted.trial import unittest

from ktstr_steps.buildsteps import Reserve, SourceLock
from tests.support.steps_harness import HOLDER, TREE, KtstrStepMixin, ktstr

PLAN = {
    "name": HOLDER,
    "pid": 4242,
    "bypass": False,
    "plan": {"llcs": [0], "cpus": [0, 1], "mems": [0], "make_jobs": 2, "cross_node": False},
    "sandbox": {"kind": "v1", "path": "/sys/fs/cgroup/cpuset/ktstr-ci/" + HOLDER},
}


def acquire(*extra: str, wait: int = 3600):
    return ktstr("holder", "acquire", "--name", HOLDER, *extra, "--wait", str(wait), "--json",
                 timeout=wait + 600)


class TestReserve(KtstrStepMixin, unittest.TestCase):
    def fake_peer(self, peer: str) -> None:
        # Buildbot's fake connection has no get_peer; the real pb/msgpack/null ones do.
        FakeConnection.get_peer = lambda conn: peer  # type: ignore[attr-defined]
        self.addCleanup(delattr, FakeConnection, "get_peer")

    def test_reserved_sets_plan_properties(self) -> None:
        self.setup_ktstr_step(Reserve())
        self.expect_commands(acquire().answer(PLAN).exit(0))
        self.expect_outcome(result=SUCCESS, state_string="reserved LLC 0 (cpus 0-1, -j2)")
        self.expect_property("llc_cpus", [0, 1], "Reserve")
        self.expect_property("llc_cpuset", "0-1")
        self.expect_property("llcs", [0])
        self.expect_property("make_jobs", 2)
        self.expect_property("holder_name", HOLDER)
        self.expect_property("sandbox_kind", "v1")
        return self.run_step()

    def test_cpu_cap_and_wait(self) -> None:
        self.setup_ktstr_step(Reserve(cpu_cap=4, lock_wait=60))
        plan = {**PLAN, "plan": {"llcs": [0, 1], "cpus": [0, 1, 2, 3], "mems": [0, 1],
                                 "make_jobs": 4, "cross_node": True}}
        self.expect_commands(acquire("--cpu-cap", "4", wait=60).answer(plan).exit(0))
        self.expect_outcome(
            result=SUCCESS, state_string="reserved LLCs 0,1 (cpus 0-3, -j4, cross-node)"
        )
        return self.run_step()

    def test_cpu_cap_rendered_from_worker_property(self) -> None:
        # Worker properties are often strings; a worker pinned to one group sets llc_ncpus.
        self.setup_ktstr_step(Reserve(cpu_cap=Property("llc_ncpus")), llc_ncpus="2")
        self.expect_commands(acquire("--cpu-cap", "2").answer(PLAN).exit(0))
        self.expect_outcome(result=SUCCESS)
        return self.run_step()

    def test_cpu_cap_absent_property_omits_flag(self) -> None:
        self.setup_ktstr_step(Reserve(cpu_cap=Property("llc_ncpus", default=None)))
        self.expect_commands(acquire().answer(PLAN).exit(0))
        self.expect_outcome(result=SUCCESS)
        return self.run_step()

    def test_bad_rendered_cpu_cap_fails_without_running(self) -> None:
        self.setup_ktstr_step(Reserve(cpu_cap=Property("llc_ncpus")), llc_ncpus="lots")
        self.expect_outcome(
            result=FAILURE, state_string="invalid cpu_cap 'lots': not an integer (failure)"
        )
        return self.run_step()

    def test_bypass(self) -> None:
        self.setup_ktstr_step(Reserve())
        bypass = {"name": HOLDER, "pid": 1, "bypass": True, "plan": None,
                  "sandbox": {"kind": "none", "path": None}}
        self.expect_commands(acquire().answer(bypass).exit(0))
        self.expect_outcome(result=SUCCESS, state_string="bypass: no reservation")
        self.expect_no_property("llc_cpus")
        self.expect_no_property("make_jobs")
        return self.run_step()

    def test_waiting_shows_in_status_line(self) -> None:
        step = self.setup_ktstr_step(Reserve())

        def check_status(_cmd: object) -> None:
            self.assertEqual(
                step.getCurrentSummary(),
                {"step": "reserving: waiting for LLC 0 (held by pid 99 ktstr)"},
            )

        self.expect_commands(
            acquire()
            .answer({"progress": {
                "phase": "reserve", "text": "waiting for LLC 0 (held by pid 99 ktstr)"}})
            .behavior(check_status)
            .answer(PLAN)
            .exit(0)
        )
        self.expect_outcome(result=SUCCESS)
        return self.run_step()

    def test_contention_fails_with_message(self) -> None:
        self.setup_ktstr_step(Reserve(lock_wait=0))
        err = {"ok": False, "errors": [{"kind": "resource-contention",
                                        "message": "could not reserve 2 CPU(s); holders: pid 9"}]}
        self.expect_commands(acquire(wait=0).answer(err).exit(1))
        self.expect_outcome(
            result=FAILURE,
            state_string="reserve failed: could not reserve 2 CPU(s); holders: pid 9 (failure)",
        )
        return self.run_step()

    def test_interrupted_wait_is_cancelled(self) -> None:
        self.setup_ktstr_step(Reserve())
        self.interrupt_nth_remote_command(0)
        exp = acquire().exit(-1)
        exp.interrupted = True
        self.expect_commands(exp)
        self.expect_outcome(result=CANCELLED, state_string="reserve interrupted (cancelled)")
        return self.run_step()

    def test_tcp_connection_is_passed_as_master_link(self) -> None:
        # The holder follows this connection: when it closes the master has lost the build.
        self.setup_ktstr_step(Reserve())
        self.fake_peer("127.0.0.1:40123")
        self.expect_commands(
            acquire("--master-link", "127.0.0.1:40123").answer(PLAN).exit(0))
        self.expect_outcome(result=SUCCESS)
        return self.run_step()

    def test_local_worker_has_no_master_link(self) -> None:
        # The in-process LocalWorker's peer is "local": the holder follows the owner pid only.
        self.setup_ktstr_step(Reserve())
        self.fake_peer("local")
        self.expect_commands(acquire().answer(PLAN).exit(0))
        self.expect_outcome(result=SUCCESS)
        return self.run_step()

    def test_config_errors(self) -> None:
        with self.assertRaisesConfigError("cpu_cap must be >= 1"):
            Reserve(cpu_cap=0)
        with self.assertRaisesConfigError("lock_wait must be an int >= 0"):
            Reserve(lock_wait=-1)
        with self.assertRaisesConfigError("cpu_cap must be"):
            Reserve(cpu_cap="2")


class TestSourceLock(KtstrStepMixin, unittest.TestCase):
    def lock(self, wait: int = 3600):
        return ktstr("holder", "lock-source", "--name", HOLDER, "--source", TREE,
                     "--wait", str(wait), "--json", timeout=wait + 600)

    def test_locked(self) -> None:
        self.setup_ktstr_step(SourceLock())
        self.expect_commands(
            self.lock().answer({"name": HOLDER, "lockfile": "/x.lock",
                                       "waited_seconds": 0.01, "holders_seen": []}).exit(0)
        )
        self.expect_outcome(result=SUCCESS, state_string="source tree locked")
        self.expect_property("source_tree", TREE)
        return self.run_step()

    def test_waited_for_holder(self) -> None:
        self.setup_ktstr_step(SourceLock(lock_wait=600))
        self.expect_commands(
            self.lock(600).answer({
                "name": HOLDER, "lockfile": "/x.lock", "waited_seconds": 42.4,
                "holders_seen": [{"pid": 4711, "cmd": "ktstr-ci phase make"}]}).exit(0)
        )
        self.expect_outcome(result=SUCCESS, state_string="waited 42s for pid 4711")
        return self.run_step()

    def test_no_tree_store_fails_clearly(self) -> None:
        self.setup_ktstr_step(SourceLock(), tree_store=None)
        self.expect_outcome(
            result=FAILURE,
            state_string="worker property tree_store is not set: no place for the per-branch "
            "tree (failure)",
        )
        return self.run_step()

    def test_relative_tree_store_fails(self) -> None:
        self.setup_ktstr_step(SourceLock(), tree_store="trees")
        self.expect_outcome(result=FAILURE)
        return self.run_step()
