"""The nightly matrix's parent run: resolve the versions, fan out the cells, finish the run.

A matrix run is one build of the ``matrix`` builder (master/matrix.py) whose
steps run on the master only (its worker is an in-process LocalWorker, so a
waiting parent never occupies an LLC group):

* :class:`~ktstr_steps.buildsteps.matrix_resolve.MatrixResolve` turns the
  settings' version specs into the run's rows *now* (recently pushed branches
  and their tips, kernel.org versions), and creates the ``matrix_runs`` row;
* :class:`MatrixFanOut` triggers one build request per cell (version ×
  profile) and waits for all of them; each cell is its own buildset, so the
  cells are never collapsed and spread over the LLC-group workers. A cell
  whose spec could not be resolved (kernel.org unreachable) starts no build:
  it is recorded as failed with the resolver's line, and the others build;
* :class:`MatrixFinish` (always runs) closes the run row with the totals and
  sets the build's summary ``N cells: B built, H cache hits, F failed``.

A version cell is a kernel build of a release tarball tree
(``kernel_build_factory(checkout=Checkout.RELEASE_TREE, ...)``, whose lookup
is :class:`ktstr_steps.buildsteps.matrix_cell.MatrixLookup`); a branch cell
runs the repository's push builder (same tree, same steps). The steps reach
the records service by its name (:mod:`ktstr_steps.buildsteps.services`);
without one the run's cells still build and the steps end WARNINGS.
"""

from __future__ import annotations

from typing import Any

from buildbot.process.factory import BuildFactory
from buildbot.process.properties import Properties
from buildbot.process.results import (
    CANCELLED,
    FAILURE,
    SKIPPED,
    SUCCESS,
    WARNINGS,
    statusToString,
)
from buildbot.reporters.utils import getURLForBuild
from twisted.internet import defer

from ktstr_steps.buildsteps.base import one_line
from ktstr_steps.buildsteps.matrix_base import CELLS_PROP, RUN_ID_PROP, TOTALS_PROP, MasterStep
from ktstr_steps.buildsteps.matrix_resolve import MatrixResolve
from ktstr_steps.errors import KtstrError
from ktstr_steps.results import BUILT_OUTCOMES, HIT_OUTCOMES, Outcome


def summary_text(cells: int, built: int, hits: int, failed: int) -> str:
    return f"{cells} cells: {built} built, {hits} cache hits, {failed} failed"


def classify_cell(results: int | None, outcome: str | None) -> str:
    """built | cache_hits | failed, the way the run row counts a finished cell."""
    if results not in (SUCCESS, WARNINGS) or outcome in (None, Outcome.FAILED, Outcome.CANCELLED):
        return "failed"
    if outcome in HIT_OUTCOMES:
        return "cache_hits"
    return "built" if outcome in BUILT_OUTCOMES else "failed"


class MatrixFanOut(MasterStep):
    """One build request per cell, all at once; waits for every cell, links each cell build."""

    name = "cells"
    description = ["building cells"]
    haltOnFailure = False
    flunkOnFailure = True
    # The build's summary is MatrixFinish's totals line, not "cells failed".
    updateBuildSummaryPolicy = False

    def __init__(
        self,
        *,
        cell_scheduler: str,
        branch_scheduler: str,
        **kwargs: Any,
    ) -> None:
        self.cell_scheduler = cell_scheduler
        # A format string with {repo} and {profile}: the Triggerable of that push builder.
        self.branch_scheduler = branch_scheduler
        super().__init__(**kwargs)
        self.brids: list[int] = []
        self.finished = 0
        self.total = 0
        self._waiting: defer.Deferred | None = None

    def getCurrentSummary(self) -> dict[str, str]:
        if not self.total:
            return {"step": "triggering cells"}
        return {"step": f"{self.finished}/{self.total} cells finished"}

    def scheduler(self, name: str) -> Any:
        sched = self.master.scheduler_manager.namedServices.get(name)
        if sched is None:
            raise KtstrError(f"no triggerable scheduler {name!r}: reconfigure the master",
                             kind="usage")
        return sched

    def cell_request(self, cell: dict[str, Any], run_id: int | None) -> tuple[Any, list, Properties]:
        props = Properties()
        label, profile = cell["label"], cell["profile"]
        values = {
            "kernel_version": label,
            "profile": profile,
            "matrix_cell": f"{label} x {profile}",
            "reason": f"matrix run {run_id if run_id is not None else '?'}: {label} x {profile}",
        }
        if run_id is not None:
            values[RUN_ID_PROP] = run_id
        for k, v in values.items():
            props.setProperty(k, v, "MatrixFanOut")
        if cell["kind"] == "branch":
            sched = self.scheduler(self.branch_scheduler.format(repo=cell["repo"], profile=profile))
            stamps = [{"codebase": "", "repository": cell["repository"], "branch": cell["branch"],
                       "revision": cell["revision"], "project": ""}]  # fmt: skip
        else:
            sched = self.scheduler(self.cell_scheduler)
            stamps = [{"codebase": "", "repository": "", "branch": None, "revision": None,
                       "project": ""}]  # fmt: skip
        return sched, stamps, props

    async def _one(self, cell: dict[str, Any], run_id: int | None) -> dict[str, Any]:
        sched, stamps, props = self.cell_request(cell, run_id)
        ids_d, results_d = sched.trigger(
            waited_for=True, sourcestamps=stamps, set_props=props,
            parent_buildid=self.build.buildid, parent_relationship="matrix cell",
        )  # fmt: skip
        _, brids = await ids_d
        brid = next(iter(brids.values()))
        self.brids.append(brid)
        try:
            await results_d
        finally:
            self.finished += 1
            self.updateSummary()
        return {"brid": brid, **cell}

    async def _unresolved(self, cell: dict[str, Any], run_id: int | None) -> dict[str, Any]:
        """A cell that starts no build: its failed row says why, so the grid shows it."""
        svc, _ = self.records()
        if svc is not None and run_id is not None:
            now = self.master.reactor.seconds()
            try:
                await svc.record({
                    "builder": self.build.builder.name, "kernel_version": cell["label"],
                    "profile": cell["profile"], "kernel_outcome": Outcome.FAILED,
                    "result": "failure", "error": cell["why"], "matrix_run_id": run_id,
                    "started_at": now, "finished_at": now,
                })  # fmt: skip
            except Exception as exc:  # the run's log still says it
                cell = {**cell, "why": f"{cell['why']} (not recorded: {one_line(str(exc))})"}
        self.finished += 1
        self.updateSummary()
        return cell

    async def run(self) -> int:
        cells = self.getProperty(CELLS_PROP) or []
        run_id = self.getProperty(RUN_ID_PROP)
        self.total = len(cells)
        self.updateSummary()
        tasks = [defer.ensureDeferred(self._unresolved(c, run_id) if c["kind"] == "unresolved"
                                      else self._one(c, run_id)) for c in cells]
        self._waiting = defer.DeferredList(tasks, consumeErrors=True)
        try:
            done = await self._waiting
        except defer.CancelledError:
            done = []
        if self.stopped:
            self.descriptionDone = "interrupted: cells cancelled"
            return CANCELLED
        totals = {"cells": len(cells), "built": 0, "cache_hits": 0, "failed": 0}
        report = []
        for (ok, value), cell in zip(done, cells, strict=True):
            if not ok:
                totals["failed"] += 1
                report.append(f"{cell['label']} x {cell['profile']}: not started: "
                              f"{value.getErrorMessage()}")
                continue
            if value["kind"] == "unresolved":
                kind, line = "failed", f"{value['label']} x {value['profile']}: {value['why']}"
            else:
                kind, line = await self._cell_result(value)
            totals[kind] += 1
            report.append(line)
        self.setProperty(TOTALS_PROP, totals, "MatrixFanOut")
        await self.addCompleteLog("cells", "\n".join(report) + "\n")
        self.descriptionDone = summary_text(
            totals["cells"], totals["built"], totals["cache_hits"], totals["failed"]
        )
        return FAILURE if totals["failed"] else SUCCESS

    async def _cell_result(self, cell: dict[str, Any]) -> tuple[str, str]:
        """(total it counts towards, report line); adds the link to the cell's build."""
        name = f"{cell['label']} x {cell['profile']}"
        builds = await self.master.db.builds.getBuilds(buildrequestid=cell["brid"])
        if not builds:
            return "failed", f"{name}: no build (request cancelled)"
        build = builds[-1]  # a retried request has several builds: the last one counts
        props = await self.master.db.builds.getBuildProperties(build.id)
        outcome = (props.get("kernel_outcome") or (None, None))[0]
        kind = classify_cell(build.results, outcome)
        word = outcome or statusToString(build.results)
        url = getURLForBuild(self.master, build.builderid, build.number)
        await self.addURL(f"{name}: {word}", url)
        return kind, f"{name}: {word} ({statusToString(build.results)}) {url}"

    def interrupt(self, reason: Any) -> None:
        # Cancel the cells: queued requests are dropped, running cell builds stopped.
        for brid in self.brids:
            self.master.data.control(
                "cancel", {"reason": "matrix run was stopped"}, ("buildrequests", brid)
            )
        super().interrupt(reason)
        if self._waiting is not None and not self._waiting.called:
            self._waiting.cancel()


class MatrixFinish(MasterStep):
    """Close the ``matrix_runs`` row; the build summary is the totals line. Always runs."""

    name = "finish"
    description = ["closing the run"]
    alwaysRun = True
    haltOnFailure = False
    flunkOnFailure = False

    def __init__(self, *, dashboard_url: str | None = None, **kwargs: Any) -> None:
        self.dashboard_url = dashboard_url
        super().__init__(**kwargs)
        self.text: str | None = None

    async def run(self) -> int:
        run_id = self.getProperty(RUN_ID_PROP)
        totals = self.getProperty(TOTALS_PROP)
        if totals is not None:
            self.text = summary_text(
                totals["cells"], totals["built"], totals["cache_hits"], totals["failed"]
            )
        if run_id is None:
            self.descriptionDone = self.text or "no matrix run was started"
            return SUCCESS if self.text else SKIPPED
        svc, why = self.records()
        if svc is None:
            self.descriptionDone = f"{self.text or 'run not closed'} (records: {why})"
            return WARNINGS
        try:
            # No totals (the fan-out was stopped): the row counts the cells recorded so far.
            run = await svc.finish_matrix_run(int(run_id), totals=totals)
        except Exception as exc:
            self.descriptionDone = f"run {run_id} not closed: {one_line(str(exc))}"
            return WARNINGS
        self.text = summary_text(run["cells"], run["built"], run["cache_hits"], run["failed"])
        if self.dashboard_url:
            await self.addURL(f"matrix run {run_id}", f"{self.dashboard_url}?id={run_id}")
        await self.since_previous(svc, int(run_id))
        self.descriptionDone = self.text
        return SUCCESS

    async def since_previous(self, svc: Any, run_id: int) -> None:
        """Add what broke (green in the previous run, red now) to the summary, and a log."""
        changes = getattr(svc, "matrix_changes", None)
        if changes is None:
            return
        try:
            got = await changes(run_id)
        except Exception as exc:  # the run is closed; only the comparison is missing
            await self.addCompleteLog("since previous run", f"not compared: {exc}\n")
            return
        if got.get("previous") is None:
            return
        lines = [f"compared with matrix run {got['previous']}"]
        lines += [f"broke: {v} x {p}" for v, p in got["broke"]]
        lines += [f"fixed: {v} x {p}" for v, p in got["fixed"]]
        await self.addCompleteLog("since previous run", "\n".join(lines) + "\n")
        if got["broke"]:
            self.text = f"{self.text}; {len(got['broke'])} broke since run {got['previous']}"

    def getResultSummary(self) -> dict[str, str]:
        summary = super().getResultSummary()
        if self.text:
            summary = {"step": self.text, "build": self.text}
        return summary


def matrix_run_factory(
    *,
    specs: list[str],
    profiles: list[str],
    repos: dict[str, str],
    cell_scheduler: str,
    branch_scheduler: str,
    branch_patterns: dict[str, list[str]] | None = None,
    recent_days: int = 14,
    releases_url: str | None = None,
    mirror: str | None = None,
    dashboard_url: str | None = None,
) -> BuildFactory:
    """The parent build: resolve → cells → finish."""
    factory = BuildFactory()
    factory.addSteps([
        MatrixResolve(specs=specs, profiles=profiles, repos=repos,
                      branch_patterns=branch_patterns, recent_days=recent_days,
                      releases_url=releases_url, mirror=mirror),
        MatrixFanOut(cell_scheduler=cell_scheduler, branch_scheduler=branch_scheduler),
        MatrixFinish(dashboard_url=dashboard_url),
    ])
    return factory


__all__ = [
    "MatrixFanOut",
    "MatrixFinish",
    "MatrixResolve",
    "classify_cell",
    "matrix_run_factory",
    "summary_text",
]

