"""The matrix steps one behaviour at a time: the parent run's resolve, fan-out and finish on the
master, and a release cell's lookup on a worker."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from buildbot.process.results import (
    CANCELLED,
    FAILURE,
    SKIPPED,
    SUCCESS,
    WARNINGS,
)
from buildbot.test import fakedb
from twisted.internet import defer
from twisted.trial import unittest

from ktstr_steps.buildsteps import matrix_resolve
from ktstr_steps.buildsteps.matrix_cell import MatrixLookup
from ktstr_steps.buildsteps.matrix_run import (
    CELLS_PROP,
    RUN_ID_PROP,
    TOTALS_PROP,
    MatrixFanOut,
    MatrixFinish,
    MatrixResolve,
)
from ktstr_steps.buildsteps.services import RECORDS_SERVICE_NAME
from ktstr_steps.kernelorg import releases
from tests.support.steps_harness import FakeRecords, KtstrStepMixin, ktstr

ROWS = releases.parse_releases(
    b'{"releases": ['
    b'{"moniker": "mainline", "version": "6.17-rc4"},'
    b'{"moniker": "stable", "version": "6.16.3"},'
    b'{"moniker": "longterm", "version": "6.12.44"}]}'
)
RELEASES_URL = "http://kernel.example/releases.json"
REPO_URL = "/srv/ci/var/linux.git"
TIP = "1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b"
TIP_A = "aaaa3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b"


class MatrixStepMixin(KtstrStepMixin):
    def use_services(self, **named: Any) -> None:
        self.master.service_manager = SimpleNamespace(namedServices=named)

    def use_records(self, records: FakeRecords) -> FakeRecords:
        self.use_services(**{RECORDS_SERVICE_NAME: records})
        return records


# ------------------------------------------------------------------ MatrixResolve


def resolve(*specs: str, profiles: tuple[str, ...] = ("tiny",)) -> MatrixResolve:
    return MatrixResolve(specs=list(specs), profiles=list(profiles), repos={"linux": REPO_URL},
                         releases_url=RELEASES_URL)


class TestMatrixResolve(MatrixStepMixin, unittest.TestCase):
    def setUp(self) -> defer.Deferred:
        self.fetched: list[str] = []
        self.tips: list[str] = []
        self.heads = {"for-next": TIP, "main": TIP, "feature-a": TIP_A}

        async def fetch(url: str) -> list[releases.Release]:
            self.fetched.append(url)
            return ROWS

        async def heads(url: str) -> dict[str, str]:
            self.tips.append(url)
            return dict(self.heads)

        def in_this_thread(fn: Any, *args: Any, **kwargs: Any) -> defer.Deferred:
            return defer.maybeDeferred(fn, *args, **kwargs)

        self.patch(matrix_resolve, "_fetch_releases", fetch)
        self.patch(matrix_resolve, "_branch_heads", heads)
        # The mirror probe runs in a thread; these specs never probe, and the test
        # reactor runs no thread pool.
        self.patch(matrix_resolve, "threads", SimpleNamespace(deferToThread=in_this_thread))
        return super().setUp()

    def test_exact_versions_need_no_releases_json(self) -> None:
        records = self.use_records(FakeRecords())
        self.setup_step(resolve("6.12.3", "6.6.50", profiles=("tiny", "tiny-preempt")))
        self.expect_outcome(result=SUCCESS,
                            state_string="4 cells: 6.12.3, 6.6.50 x tiny, tiny-preempt")
        self.expect_property(CELLS_PROP, [
            {"label": "6.12.3", "profile": "tiny", "kind": "exact", "version": "6.12.3"},
            {"label": "6.12.3", "profile": "tiny-preempt", "kind": "exact", "version": "6.12.3"},
            {"label": "6.6.50", "profile": "tiny", "kind": "exact", "version": "6.6.50"},
            {"label": "6.6.50", "profile": "tiny-preempt", "kind": "exact", "version": "6.6.50"},
        ])
        self.expect_property("matrix_versions", ["6.12.3", "6.6.50"])
        self.expect_property(RUN_ID_PROP, 5)
        self.expect_log_file("resolve", "6.12.3 -> 6.12.3\n6.6.50 -> 6.6.50\n"
                             "2 version(s) x 2 profile(s) = 4 cells\n")
        d = self.run_step()

        @d.addCallback
        def check(_: object) -> None:
            self.assertEqual(self.fetched, [])
            self.assertEqual(records.started, [{
                "versions": ["6.12.3", "6.6.50"], "profiles": ["tiny", "tiny-preempt"],
                "spec": "6.12.3 6.6.50", "buildid": 92}])

        return d

    def test_named_versions_are_resolved_from_releases_json_now(self) -> None:
        self.use_records(FakeRecords())
        self.setup_step(resolve("latest-stable", "mainline"))
        # latest-stable is the first stable row with patch >= 8 (ktstr skips fresh .0-.7).
        self.expect_outcome(result=SUCCESS, state_string="2 cells: 6.12.44, 6.17-rc4 x tiny")
        self.expect_log_file("resolve", f"releases.json: {RELEASES_URL}\n"
                             "latest-stable -> 6.12.44\nmainline -> 6.17-rc4\n"
                             "2 version(s) x 1 profile(s) = 2 cells\n")
        d = self.run_step()
        d.addCallback(lambda _: self.assertEqual(self.fetched, [RELEASES_URL]))
        return d

    def test_branch_cells_build_the_branch_tip_of_now(self) -> None:
        self.use_records(FakeRecords())
        self.setup_step(resolve("branch:linux/for-next"))
        self.expect_outcome(result=SUCCESS, state_string="1 cells: branch:linux/for-next x tiny")
        self.expect_property(CELLS_PROP, [{
            "label": "branch:linux/for-next", "profile": "tiny", "kind": "branch",
            "repo": "linux", "repository": REPO_URL, "branch": "for-next", "revision": TIP}])
        self.expect_log_file("resolve", f"branch:linux/for-next -> branch:linux/for-next "
                             f"@ {TIP[:12]}\n1 version(s) x 1 profile(s) = 1 cells\n")
        d = self.run_step()
        d.addCallback(lambda _: self.assertEqual(self.tips, [REPO_URL]))
        return d

    def test_a_branch_of_an_unknown_repository_fails_only_its_cells(self) -> None:
        self.use_records(FakeRecords())
        self.setup_step(resolve("branch:other/main", "6.12.3"))
        self.expect_outcome(result=SUCCESS,
                            state_string="2 cells: branch:other/main, 6.12.3 x tiny (1 unresolved)")
        self.expect_property(CELLS_PROP, [
            {"label": "branch:other/main", "profile": "tiny", "kind": "unresolved",
             "why": "no repository 'other' in [[repos]]"},
            {"label": "6.12.3", "profile": "tiny", "kind": "exact", "version": "6.12.3"}])
        return self.run_step()

    def test_a_deleted_named_branch_fails_only_its_cells(self) -> None:
        self.use_records(FakeRecords())
        self.setup_step(resolve("branch:linux/gone"))
        self.expect_outcome(result=SUCCESS, state_string=None)
        self.expect_property(CELLS_PROP, [
            {"label": "branch:linux/gone", "profile": "tiny", "kind": "unresolved",
             "why": f"branch 'gone' does not exist in {REPO_URL}"}])
        return self.run_step()

    def test_unreachable_kernel_org_fails_only_its_cells_naming_the_url(self) -> None:
        async def unreachable(url: str) -> list[releases.Release]:
            raise releases.unreachable(url, OSError("connection refused"),
                                       setting=matrix_resolve.RELEASES_SETTING)

        self.patch(matrix_resolve, "_fetch_releases", unreachable)
        records = self.use_records(FakeRecords())
        self.setup_step(resolve("latest-stable", "6.6..6.12", "branch:linux/main",
                                profiles=("tiny", "default")))
        self.expect_outcome(result=SUCCESS, state_string=(
            "6 cells: latest-stable, 6.6..6.12, branch:linux/main x tiny, default (2 unresolved)"))
        d = self.run_step()

        @d.addCallback
        def check(_: object) -> None:
            cells = self.get_nth_step(0).getProperty(CELLS_PROP)
            failed = [c for c in cells if c["kind"] == "unresolved"]
            self.assertEqual([(c["label"], c["profile"]) for c in failed], [
                ("latest-stable", "tiny"), ("latest-stable", "default"),
                ("6.6..6.12", "tiny"), ("6.6..6.12", "default")])
            for c in failed:  # one line that names the URL and the setting to change
                self.assertNotIn("\n", c["why"])
                self.assertIn(RELEASES_URL, c["why"])
                self.assertIn("matrix.releases_url", c["why"])
            # The branch still builds, and the run row lists every row of the grid.
            self.assertEqual([(c["label"], c["kind"]) for c in cells if c not in failed],
                             [("branch:linux/main", "branch")] * 2)
            self.assertEqual(records.started[0]["versions"],
                             ["latest-stable", "6.6..6.12", "branch:linux/main"])

        return d

    def test_without_records_service_the_cells_still_build(self) -> None:
        self.setup_step(resolve("6.12.3"))
        self.expect_outcome(
            result=WARNINGS,
            state_string="1 cells: 6.12.3 x tiny (no run row: no records service configured) "
                         "(warnings)")
        self.expect_property(CELLS_PROP, [
            {"label": "6.12.3", "profile": "tiny", "kind": "exact", "version": "6.12.3"}])
        self.expect_no_property(RUN_ID_PROP)
        return self.run_step()

    def test_a_run_row_the_database_refuses_is_a_warning(self) -> None:
        self.use_records(FakeRecords(fail=RuntimeError("database is locked")))
        self.setup_step(resolve("6.12.3"))
        self.expect_outcome(
            result=WARNINGS,
            state_string="1 cells: 6.12.3 x tiny (no run row: database is locked) (warnings)")
        self.expect_no_property(RUN_ID_PROP)
        return self.run_step()


DAY = 86400


class TestRecentBranches(MatrixStepMixin, unittest.TestCase):
    """``recent-branches``: the rows are the branches Buildbot saw pushed lately, at their tips."""

    def setUp(self) -> defer.Deferred:
        self.ls_remote: list[str] = []

        async def heads(url: str) -> dict[str, str]:
            self.ls_remote.append(url)
            return {"main": TIP, "feature-a": TIP_A, "old": TIP, "skip-me": TIP}

        self.patch(matrix_resolve, "_branch_heads", heads)
        return super().setUp()

    @defer.inlineCallbacks
    def push(self, *changes: tuple[str, str, float]) -> Any:
        now = 100 * DAY
        self.reactor.advance(now)
        rows: list[Any] = [fakedb.SourceStamp(id=92)]
        for i, (repo, branch, age_days) in enumerate(changes, start=1):
            rows.append(fakedb.Change(changeid=i, branch=branch, repository=repo,
                                      revision=f"{i:040x}", sourcestampid=92,
                                      when_timestamp=int(now - age_days * DAY)))
        yield self.master.db.insert_test_data(rows)

    def step(self, **kw: Any) -> MatrixResolve:
        return MatrixResolve(specs=["recent-branches"], profiles=["tiny", "default"],
                             repos={"linux": REPO_URL}, recent_days=14,
                             branch_patterns={"linux": ["main", "feature-.*", "old", "gone"]},
                             **kw)

    @defer.inlineCallbacks
    def test_branches_pushed_lately_build_at_their_tip_under_every_profile(self) -> Any:
        yield self.push((REPO_URL, "main", 1), (REPO_URL, "feature-a", 13.5),
                        (REPO_URL, "main", 2),       # twice pushed: one row
                        (REPO_URL, "old", 15),       # outside recent_days
                        (REPO_URL, "skip-me", 1),    # would not build on push
                        (REPO_URL, "gone", 1),       # deleted since: no tip
                        ("/elsewhere.git", "main", 1))  # not one of the repositories
        records = self.use_records(FakeRecords())
        self.setup_step(self.step())
        self.expect_outcome(result=SUCCESS, state_string=(
            "4 cells: branch:linux/feature-a, branch:linux/main x tiny, default"))
        self.expect_property(CELLS_PROP, [
            {"label": f"branch:linux/{b}", "profile": p, "kind": "branch", "repo": "linux",
             "repository": REPO_URL, "branch": b, "revision": tip}
            for b, tip in (("feature-a", TIP_A), ("main", TIP)) for p in ("tiny", "default")])
        self.expect_log_file("resolve", (
            "recent-branches: 3 branch(es) pushed in the last 14 days\n"
            "  branch:linux/gone: deleted since, not built\n"
            f"recent-branches -> branch:linux/feature-a @ {TIP_A[:12]}\n"
            f"recent-branches -> branch:linux/main @ {TIP[:12]}\n"
            "2 version(s) x 2 profile(s) = 4 cells\n"))
        yield self.run_step()
        self.assertEqual(self.ls_remote, [REPO_URL])  # one ls-remote per repository
        self.assertEqual(records.started[0]["versions"],
                         ["branch:linux/feature-a", "branch:linux/main"])

    @defer.inlineCallbacks
    def test_an_old_commit_pushed_today_is_recent_through_its_build(self) -> Any:
        # The change is dated by its commit (a year ago); its push built two days ago.
        yield self.push((REPO_URL, "feature-a", 365))
        records = self.use_records(FakeRecords())
        records.built = [(REPO_URL, "feature-a"), ("/elsewhere.git", "main")]
        self.setup_step(self.step())
        self.expect_outcome(result=SUCCESS,
                            state_string="2 cells: branch:linux/feature-a x tiny, default")
        yield self.run_step()
        self.assertEqual(records.since, [100 * DAY - 14 * DAY])

    @defer.inlineCallbacks
    def test_no_push_lately_is_an_empty_run_that_says_why(self) -> Any:
        yield self.push((REPO_URL, "main", 30))
        self.use_records(FakeRecords())
        self.setup_step(self.step())
        self.expect_outcome(result=SUCCESS, state_string=(
            "no cells: nothing to build (no branch pushed in the last 14 days)"))
        self.expect_property(CELLS_PROP, [])
        yield self.run_step()

    @defer.inlineCallbacks
    def test_an_unreachable_repository_fails_only_its_branch_cells(self) -> Any:
        async def down(url: str) -> dict[str, str]:
            raise matrix_resolve.KtstrError(f"git ls-remote {url}: connection refused",
                                            kind="git-failed")

        self.patch(matrix_resolve, "_branch_heads", down)
        yield self.push((REPO_URL, "main", 1))
        self.use_records(FakeRecords())
        self.setup_step(MatrixResolve(specs=["recent-branches", "6.12.3"], profiles=["tiny"],
                                      repos={"linux": REPO_URL}))
        self.expect_outcome(result=SUCCESS, state_string=None)
        self.expect_property(CELLS_PROP, [
            {"label": "branch:linux/main", "profile": "tiny", "kind": "unresolved",
             "why": f"git ls-remote {REPO_URL}: connection refused"},
            {"label": "6.12.3", "profile": "tiny", "kind": "exact", "version": "6.12.3"}])
        yield self.run_step()


# ------------------------------------------------------------------ MatrixFanOut


class FakeTriggerable:
    """A Triggerable scheduler: records each trigger, answers with a build request id."""

    def __init__(self, name: str, brids: list[int], done: bool = True) -> None:
        self.name = name
        self.brids = list(brids)
        self.done = done
        self.calls: list[dict[str, Any]] = []
        self.waiting: list[defer.Deferred] = []

    def trigger(self, *, waited_for: bool, sourcestamps: list, set_props: Any,
                parent_buildid: int, parent_relationship: str) -> tuple[Any, Any]:
        brid = self.brids.pop(0)
        self.calls.append({"props": set_props.asDict(), "sourcestamps": sourcestamps,
                           "parent_buildid": parent_buildid, "waited_for": waited_for,
                           "relationship": parent_relationship})
        results: defer.Deferred = defer.Deferred()
        if self.done:
            results.callback((SUCCESS, {100: brid}))
        else:
            self.waiting.append(results)
        return defer.succeed((brid, {100: brid})), results


CELLS = [
    {"label": "6.12.3", "profile": "tiny", "kind": "exact", "version": "6.12.3"},
    {"label": "6.16.3", "profile": "tiny", "kind": "exact", "version": "6.16.3"},
]
BRANCH_CELL = {"label": "branch:linux/main", "profile": "tiny", "kind": "branch", "repo": "linux",
               "repository": REPO_URL, "branch": "main", "revision": TIP}


def fan_out() -> MatrixFanOut:
    return MatrixFanOut(cell_scheduler="matrix-cells", branch_scheduler="matrix-{repo}-{profile}")


class TestMatrixFanOut(MatrixStepMixin, unittest.TestCase):
    def setUp(self) -> defer.Deferred:
        d = super().setUp()
        self.master.config.buildbotURL = "http://ci.example/"
        return d

    def schedulers(self, *scheds: FakeTriggerable) -> None:
        self.master.scheduler_manager = SimpleNamespace(
            namedServices={s.name: s for s in scheds})

    @defer.inlineCallbacks
    def cell_builds(self, *cells: tuple[int, int, int, str | None]) -> Any:
        """(brid, buildid, results, kernel_outcome) of the cells' builds, in the database."""
        rows: list[Any] = []
        for brid, buildid, results, outcome in cells:
            rows += [fakedb.BuildRequest(id=brid, buildsetid=200, builderid=100),
                     fakedb.Build(id=buildid, buildrequestid=brid, number=buildid,
                                  masterid=fakedb.FakeDBConnector.MASTER_ID, builderid=100,
                                  workerid=400, results=results)]
            if outcome is not None:
                rows.append(fakedb.BuildProperty(buildid=buildid, name="kernel_outcome",
                                                 value=outcome, source="Record"))
        yield self.master.db.insert_test_data(rows)

    @defer.inlineCallbacks
    def test_one_request_per_cell_then_the_totals(self) -> Any:
        sched = FakeTriggerable("matrix-cells", [301, 302])
        self.schedulers(sched)
        yield self.cell_builds((301, 1001, SUCCESS, "cached"), (302, 1002, SUCCESS, "cache-hit"))
        self.setup_step(fan_out())
        self.build.setProperty(CELLS_PROP, CELLS, "MatrixResolve")
        self.build.setProperty(RUN_ID_PROP, 5, "MatrixResolve")
        self.expect_outcome(result=SUCCESS,
                            state_string="2 cells: 1 built, 1 cache hits, 0 failed")
        self.expect_property(TOTALS_PROP, {"cells": 2, "built": 1, "cache_hits": 1, "failed": 0})
        self.expect_log_file("cells", "6.12.3 x tiny: cached (success) "
                             "http://ci.example/#/builders/100/builds/1001\n"
                             "6.16.3 x tiny: cache-hit (success) "
                             "http://ci.example/#/builders/100/builds/1002\n")
        yield self.run_step()
        self.assertEqual([c["props"]["kernel_version"] for c in sched.calls],
                         [("6.12.3", "MatrixFanOut"), ("6.16.3", "MatrixFanOut")])
        first = sched.calls[0]
        self.assertEqual(first["props"]["matrix_cell"], ("6.12.3 x tiny", "MatrixFanOut"))
        self.assertEqual(first["props"][RUN_ID_PROP], (5, "MatrixFanOut"))
        self.assertEqual(first["props"]["reason"],
                         ("matrix run 5: 6.12.3 x tiny", "MatrixFanOut"))
        self.assertEqual((first["parent_buildid"], first["relationship"], first["waited_for"]),
                         (92, "matrix cell", True))

    @defer.inlineCallbacks
    def test_an_unresolved_cell_starts_no_build_and_is_recorded_failed(self) -> Any:
        sched = FakeTriggerable("matrix-cells", [301])
        self.schedulers(sched)
        records = self.use_records(FakeRecords())
        yield self.cell_builds((301, 1001, SUCCESS, "cached"))
        why = "fetch releases.json http://kernel.example/releases.json: connection refused"
        self.setup_step(fan_out())
        self.build.setProperty(CELLS_PROP, [
            CELLS[0], {"label": "latest-stable", "profile": "tiny", "kind": "unresolved",
                       "why": why}], "MatrixResolve")
        self.build.setProperty(RUN_ID_PROP, 5, "MatrixResolve")
        self.expect_outcome(result=FAILURE,
                            state_string="2 cells: 1 built, 0 cache hits, 1 failed (failure)")
        self.expect_log_file("cells", "6.12.3 x tiny: cached (success) "
                             "http://ci.example/#/builders/100/builds/1001\n"
                             f"latest-stable x tiny: {why}\n")
        yield self.run_step()
        self.assertEqual(len(sched.calls), 1)  # only the resolved cell was requested
        [row] = records.rows
        self.assertEqual({k: row[k] for k in ("kernel_version", "profile", "kernel_outcome",
                                              "result", "error", "matrix_run_id")},
                         {"kernel_version": "latest-stable", "profile": "tiny",
                          "kernel_outcome": "failed", "result": "failure", "error": why,
                          "matrix_run_id": 5})

    @defer.inlineCallbacks
    def test_a_branch_cell_is_a_request_of_the_push_builder_at_the_tip(self) -> Any:
        sched = FakeTriggerable("matrix-linux-tiny", [301])
        self.schedulers(FakeTriggerable("matrix-cells", []), sched)
        yield self.cell_builds((301, 1001, SUCCESS, "cached"))
        self.setup_step(fan_out())
        self.build.setProperty(CELLS_PROP, [BRANCH_CELL], "MatrixResolve")
        self.expect_outcome(result=SUCCESS,
                            state_string="1 cells: 1 built, 0 cache hits, 0 failed")
        yield self.run_step()
        [call] = sched.calls
        self.assertEqual(call["sourcestamps"], [{"codebase": "", "repository": REPO_URL,
                                                 "branch": "main", "revision": TIP,
                                                 "project": ""}])
        self.assertEqual(call["props"]["reason"],
                         ("matrix run ?: branch:linux/main x tiny", "MatrixFanOut"))

    @defer.inlineCallbacks
    def test_a_failed_cell_fails_the_run(self) -> Any:
        self.schedulers(FakeTriggerable("matrix-cells", [301, 302]))
        yield self.cell_builds((301, 1001, SUCCESS, "cached"), (302, 1002, FAILURE, "failed"))
        self.setup_step(fan_out())
        self.build.setProperty(CELLS_PROP, CELLS, "MatrixResolve")
        self.expect_outcome(result=FAILURE,
                            state_string="2 cells: 1 built, 0 cache hits, 1 failed (failure)")
        self.expect_property(TOTALS_PROP, {"cells": 2, "built": 1, "cache_hits": 0, "failed": 1})
        yield self.run_step()

    @defer.inlineCallbacks
    def test_a_cancelled_request_counts_as_failed(self) -> Any:
        self.schedulers(FakeTriggerable("matrix-cells", [301]))
        yield self.master.db.insert_test_data([
            fakedb.BuildRequest(id=301, buildsetid=200, builderid=100)])
        self.setup_step(fan_out())
        self.build.setProperty(CELLS_PROP, CELLS[:1], "MatrixResolve")
        self.expect_outcome(result=FAILURE,
                            state_string="1 cells: 0 built, 0 cache hits, 1 failed (failure)")
        self.expect_log_file("cells", "6.12.3 x tiny: no build (request cancelled)\n")
        yield self.run_step()

    def test_a_missing_scheduler_leaves_the_cell_not_started(self) -> defer.Deferred:
        self.schedulers()  # a master that was not reconfigured with the matrix
        self.setup_step(fan_out())
        self.build.setProperty(CELLS_PROP, CELLS[:1], "MatrixResolve")
        self.expect_outcome(result=FAILURE,
                            state_string="1 cells: 0 built, 0 cache hits, 1 failed (failure)")
        self.expect_log_file("cells", "6.12.3 x tiny: not started: no triggerable scheduler "
                             "'matrix-cells': reconfigure the master\n")
        return self.run_step()

    def test_a_stop_cancels_every_cell(self) -> defer.Deferred:
        sched = FakeTriggerable("matrix-cells", [301, 302], done=False)
        self.schedulers(sched)
        cancelled: list[tuple] = []

        def control(action: str, args: dict, path: tuple) -> None:
            cancelled.append((action, args["reason"], path))

        self.master.data.control = control
        step = self.setup_step(fan_out())
        self.build.setProperty(CELLS_PROP, CELLS, "MatrixResolve")
        self.expect_outcome(result=CANCELLED,
                            state_string="interrupted: cells cancelled (cancelled)")
        self.expect_no_property(TOTALS_PROP)
        d = self.run_step()
        self.assertEqual(len(sched.waiting), 2)  # both cells requested before any finished
        step.interrupt("stopped by user")

        @d.addCallback
        def check(_: object) -> None:
            self.assertEqual(cancelled, [
                ("cancel", "matrix run was stopped", ("buildrequests", 301)),
                ("cancel", "matrix run was stopped", ("buildrequests", 302))])

        return d


# ------------------------------------------------------------------ MatrixFinish


class TestMatrixFinish(MatrixStepMixin, unittest.TestCase):
    def finish(self) -> MatrixFinish:
        return MatrixFinish(dashboard_url="http://ci.example/plugins/wsgi_dashboards/ktstr/"
                                          "matrix.html")

    def test_closes_the_run_row_and_links_the_grid(self) -> defer.Deferred:
        records = self.use_records(FakeRecords())
        step = self.setup_step(self.finish())
        totals = {"cells": 4, "built": 2, "cache_hits": 1, "failed": 1}
        self.build.setProperty(RUN_ID_PROP, 5, "MatrixResolve")
        self.build.setProperty(TOTALS_PROP, totals, "MatrixFanOut")
        self.expect_outcome(result=SUCCESS, state_string="4 cells: 2 built, 1 cache hits, 1 failed")
        # The build's summary is the totals line, not "build successful".
        text = "4 cells: 2 built, 1 cache hits, 1 failed"
        self.expect_result_summary({"step": text, "build": text})
        urls: list[tuple[str, str]] = []
        step.addURL = lambda name, url: urls.append((name, url)) or defer.succeed(None)
        d = self.run_step()

        @d.addCallback
        def check(_: object) -> None:
            self.assertEqual(records.finished, [(5, totals)])
            self.assertEqual(urls, [("matrix run 5", "http://ci.example/plugins/"
                                     "wsgi_dashboards/ktstr/matrix.html?id=5")])

        return d

    def test_says_what_broke_since_the_previous_run(self) -> defer.Deferred:
        records = self.use_records(FakeRecords())
        records.changes = {"previous": 4, "broke": [["branch:linux/main", "default"]],
                           "fixed": [["6.12.3", "tiny"]]}
        self.setup_step(self.finish())
        self.build.setProperty(RUN_ID_PROP, 5, "MatrixResolve")
        text = "4 cells: 2 built, 1 cache hits, 1 failed; 1 broke since run 4"
        self.expect_outcome(result=SUCCESS, state_string=text)
        self.expect_result_summary({"step": text, "build": text})
        self.expect_log_file("since previous run", "compared with matrix run 4\n"
                             "broke: branch:linux/main x default\nfixed: 6.12.3 x tiny\n")
        return self.run_step()

    def test_nothing_broke_keeps_the_totals_line(self) -> defer.Deferred:
        records = self.use_records(FakeRecords())
        records.changes = {"previous": 4, "broke": [], "fixed": []}
        self.setup_step(self.finish())
        self.build.setProperty(RUN_ID_PROP, 5, "MatrixResolve")
        self.expect_outcome(result=SUCCESS, state_string="4 cells: 2 built, 1 cache hits, 1 failed")
        return self.run_step()

    def test_a_stopped_fan_out_lets_the_row_count_the_cells(self) -> defer.Deferred:
        records = self.use_records(FakeRecords())
        self.setup_step(self.finish())
        self.build.setProperty(RUN_ID_PROP, 5, "MatrixResolve")
        self.expect_outcome(result=SUCCESS, state_string="4 cells: 2 built, 1 cache hits, 1 failed")
        d = self.run_step()
        d.addCallback(lambda _: self.assertEqual(records.finished, [(5, None)]))
        return d

    def test_no_run_started_is_skipped(self) -> defer.Deferred:
        self.setup_step(self.finish())
        self.expect_outcome(result=SKIPPED, state_string="no matrix run was started (skipped)")
        return self.run_step()

    def test_totals_without_a_run_row_are_still_the_summary(self) -> defer.Deferred:
        self.setup_step(self.finish())
        self.build.setProperty(TOTALS_PROP, {"cells": 1, "built": 1, "cache_hits": 0,
                                             "failed": 0}, "MatrixFanOut")
        self.expect_outcome(result=SUCCESS, state_string="1 cells: 1 built, 0 cache hits, 0 failed")
        return self.run_step()

    def test_without_records_service_the_run_is_not_closed(self) -> defer.Deferred:
        self.setup_step(self.finish())
        self.build.setProperty(RUN_ID_PROP, 5, "MatrixResolve")
        self.expect_outcome(
            result=WARNINGS,
            state_string="run not closed (records: no records service configured) (warnings)")
        return self.run_step()

    def test_a_database_error_is_a_warning(self) -> defer.Deferred:
        self.use_records(FakeRecords(fail=RuntimeError("database is locked")))
        self.setup_step(self.finish())
        self.build.setProperty(RUN_ID_PROP, 5, "MatrixResolve")
        self.expect_outcome(result=WARNINGS,
                            state_string="run 5 not closed: database is locked (warnings)")
        return self.run_step()

    def test_always_runs_and_never_fails_the_run(self) -> None:
        step = self.finish()
        self.assertTrue(step.alwaysRun)
        self.assertFalse(step.flunkOnFailure)


# ------------------------------------------------------------------ MatrixLookup

KEY = "6.12.3-tarball-x86_64-kc0123abcd"
STORE = "/srv/trees"


def lookup_cmd(*extra: str) -> Any:
    # A download and extraction of a real tree may take long: an hour's timeout.
    return ktstr("phase", "lookup", "--state", "ktstr-state.json", "--version", "6.12.3",
                 "--profile", "tiny", "--download-cache", "/dl", "--tree-store", STORE,
                 *extra, "--json", timeout=3600)


class TestMatrixLookup(MatrixStepMixin, unittest.TestCase):
    def setup_lookup(self, step: MatrixLookup | None = None, **props: Any) -> MatrixLookup:
        step = self.setup_ktstr_step(
            step or MatrixLookup(download_cache="/dl", miss_steps=["phases"],
                                 release_steps=["release"]),
            **{"kernel_version": "6.12.3", "profile": "tiny", "tree_store": STORE, **props})
        self.added: list[tuple[str, list]] = []
        self.build.addStepsAfterCurrentStep = lambda s: self.added.append(("next", s))
        self.build.addStepsAfterLastStep = lambda s: self.added.append(("last", s))
        return step

    def test_a_hit_ends_the_cell_with_no_phase_added(self) -> defer.Deferred:
        self.setup_lookup()
        self.expect_commands(lookup_cmd().answer({
            "cache_key": KEY, "hit": True, "entry_dir": f"/cache/{KEY}",
            "outcome": "cache-hit"}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string=f"cache hit {KEY}")
        self.expect_property("cache_key", KEY)
        self.expect_property("kernel_outcome", "cache-hit")
        self.expect_property("entry_dir", f"/cache/{KEY}")
        self.expect_property("kernel_profile", "tiny")
        self.expect_no_property("source_tree")
        d = self.run_step()
        d.addCallback(lambda _: self.assertEqual(self.added, []))
        return d

    def test_a_miss_adds_the_phases_next_and_the_release_last(self) -> defer.Deferred:
        self.setup_lookup()
        self.expect_commands(lookup_cmd().answer({
            "cache_key": KEY, "hit": False, "source_dir": f"{STORE}/releases/6.12.3",
            "downloaded": True}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string=f"cache miss {KEY} (downloaded)")
        self.expect_property("source_tree", f"{STORE}/releases/6.12.3")
        self.expect_no_property("kernel_outcome")
        d = self.run_step()
        d.addCallback(lambda _: self.assertEqual(
            self.added, [("next", ["phases"]), ("last", ["release"])]))
        return d

    def test_a_miss_says_where_the_tree_came_from(self) -> defer.Deferred:
        self.setup_lookup()
        self.expect_commands(lookup_cmd().answer({
            "cache_key": KEY, "hit": False, "source_dir": f"{STORE}/releases/6.12.3",
            "tarball": "/dl/linux-6.12.3.tar.xz"}).exit(0))
        self.expect_outcome(result=SUCCESS,
                            state_string=f"cache miss {KEY} (tarball from the download cache)")
        return self.run_step()

    def test_a_miss_on_an_extracted_tree_reuses_it(self) -> defer.Deferred:
        self.setup_lookup()
        self.expect_commands(lookup_cmd().answer({
            "cache_key": KEY, "hit": False, "source_dir": f"{STORE}/releases/6.12.3"}).exit(0))
        self.expect_outcome(result=SUCCESS,
                            state_string=f"cache miss {KEY} (extracted tree reused)")
        return self.run_step()

    def test_mirrors_and_force_reach_the_command(self) -> defer.Deferred:
        self.setup_lookup(MatrixLookup(download_cache="/dl", mirror="https://m.example/k",
                                       rc_mirror="https://rc.example/t", force=True))
        self.expect_commands(lookup_cmd("--mirror", "https://m.example/k", "--rc-mirror",
                                        "https://rc.example/t", "--force").answer({
            "cache_key": KEY, "hit": False, "source_dir": f"{STORE}/r",
            "downloaded": True}).exit(0))
        self.expect_outcome(result=SUCCESS, state_string=f"cache miss {KEY} (downloaded)")
        return self.run_step()

    def test_a_cell_not_started_by_the_matrix_fails_before_running_anything(self) -> defer.Deferred:
        self.setup_lookup(kernel_version=None)
        self.expect_outcome(
            result=FAILURE,
            state_string="no kernel_version property: this builder is started by the matrix "
                         "run (failure)")
        return self.run_step()

    def test_a_worker_without_tree_store_fails_clearly(self) -> defer.Deferred:
        self.setup_lookup(tree_store=None)
        self.expect_outcome(
            result=FAILURE,
            state_string="worker property tree_store is not set: no place for the extracted "
                         "tree (failure)")
        return self.run_step()

    def test_a_failed_download_fails_the_cell(self) -> defer.Deferred:
        self.setup_lookup()
        self.expect_commands(lookup_cmd().answer({"ok": False, "errors": [
            {"kind": "download-failed", "message": "HTTP 404 for linux-6.12.3.tar.xz"}]})
            .exit(1))
        self.expect_outcome(
            result=FAILURE,
            state_string="cache-lookup failed: HTTP 404 for linux-6.12.3.tar.xz (failure)")
        d = self.run_step()
        d.addCallback(lambda _: self.assertEqual(self.added, []))
        return d

