"""The nightly matrix's parent run: resolve the versions, fan out the cells, finish the run.

A matrix run is one build of the ``matrix`` builder (master/matrix.py) whose
steps run on the master only (its worker is an in-process LocalWorker, so a
waiting parent never occupies an LLC group):

* :class:`MatrixResolve` turns the settings' version specs into exact versions
  *now* (releases.json over treq, off the reactor; an EOL prefix's mirror probe
  in a thread) and branch tips (``git ls-remote``), and creates the
  ``matrix_runs`` row;
* :class:`MatrixFanOut` triggers one build request per cell (version ×
  profile) and waits for all of them; each cell is its own buildset, so the
  cells are never collapsed and spread over the LLC-group workers;
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

from buildbot.process import buildstep
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
from twisted.internet import defer, threads
from twisted.internet.utils import getProcessOutputAndValue

from ktstr_steps.buildsteps.base import one_line
from ktstr_steps.buildsteps.services import RecordsService, find_records_service
from ktstr_steps.errors import KtstrError
from ktstr_steps.kernelorg import http as kernelorg_http
from ktstr_steps.kernelorg import releases, urls
from ktstr_steps.matrixspec import parse_spec, resolve_versions, unique_labels
from ktstr_steps.results import BUILT_OUTCOMES, HIT_OUTCOMES, Outcome

# Build properties of the parent run, read by the later steps of the same build.
CELLS_PROP = "matrix_cells"
RUN_ID_PROP = "matrix_run_id"
TOTALS_PROP = "matrix_totals"
RELEASES_TIMEOUT = 30.0
# What the user changes to fetch releases.json from elsewhere.
RELEASES_SETTING = "matrix.releases_url"


def summary_text(cells: int, built: int, hits: int, failed: int) -> str:
    return f"{cells} cells: {built} built, {hits} cache hits, {failed} failed"


def classify_cell(results: int | None, outcome: str | None) -> str:
    """built | cache_hits | failed, the way the run row counts a finished cell."""
    if results not in (SUCCESS, WARNINGS) or outcome in (None, Outcome.FAILED, Outcome.CANCELLED):
        return "failed"
    if outcome in HIT_OUTCOMES:
        return "cache_hits"
    return "built" if outcome in BUILT_OUTCOMES else "failed"


# ---------------------------------------------------------------- parent steps


class _MasterStep(buildstep.BuildStep):
    """A step that runs on the master only (no remote commands)."""

    def records(self) -> tuple[RecordsService | None, str | None]:
        return find_records_service(self.master)


async def _fetch_releases(url: str) -> list[releases.Release]:
    """releases.json over treq: the reactor keeps serving while kernel.org answers.

    Only the transport is here; the answer is checked and parsed by the kernel.org
    package, like the worker command's own fetch.
    """
    import treq

    try:
        resp = await treq.get(url, timeout=RELEASES_TIMEOUT,
                              headers={"User-Agent": [kernelorg_http.USER_AGENT]})
        body = await treq.content(resp)
    except Exception as exc:  # DNS, refused, timeout: one message for all of them
        raise releases.unreachable(url, exc, setting=RELEASES_SETTING) from None
    ctype = b",".join(resp.headers.getRawHeaders(b"content-type", [])).decode(errors="replace")
    return releases.releases_from_answer(url, resp.code, ctype, body, setting=RELEASES_SETTING)


async def _branch_tip(url: str, branch: str) -> str:
    """The commit ``branch`` points at now (git ls-remote, a child process: no blocking)."""
    out, err, code = await getProcessOutputAndValue(
        "git", ["ls-remote", "--heads", "--", url, f"refs/heads/{branch}"],
        env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"},
    )  # fmt: skip
    if code != 0:
        why = err.decode(errors="replace").strip().splitlines()
        raise KtstrError(f"git ls-remote {url}: {why[-1] if why else code}", kind="git-failed")
    for line in out.decode(errors="replace").splitlines():
        sha, _, ref = line.partition("\t")
        if ref == f"refs/heads/{branch}":
            return sha
    raise KtstrError(f"branch {branch!r} does not exist in {url}", kind="git-ref-not-found")


class MatrixResolve(_MasterStep):
    """Resolve the version specs now, list the cells, open the ``matrix_runs`` row."""

    name = "resolve"
    description = ["resolving versions"]
    haltOnFailure = True

    def __init__(
        self,
        *,
        specs: list[str],
        profiles: list[str],
        repos: dict[str, str],
        releases_url: str | None = None,
        mirror: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.specs = list(specs)
        self.profiles = list(profiles)
        self.repos = dict(repos)
        self.releases_url = releases_url
        self.mirror = mirror
        super().__init__(**kwargs)

    async def run(self) -> int:
        lines: list[str] = []
        try:
            parsed = [parse_spec(s) for s in self.specs]
            rows = None
            if any(p.needs_releases for p in parsed):
                url = urls.releases_url(self.releases_url)
                lines.append(f"releases.json: {url}")
                rows = await _fetch_releases(url)
            # A prefix of an EOL series probes the mirror with blocking HEADs.
            resolved = await threads.deferToThread(
                resolve_versions, parsed, rows, mirror=self.mirror
            )
            tips: dict[str, str] = {}
            for spec, _ in resolved:
                if spec.kind == "branch":
                    url = self.repos.get(spec.repo or "")
                    if url is None:
                        raise KtstrError(f"no repository {spec.repo!r} in [[repos]]", kind="usage")
                    tips[spec.text] = await _branch_tip(url, spec.branch or "")
        except (KtstrError, ValueError) as exc:
            await self.addCompleteLog("resolve", "\n".join([*lines, f"error: {exc}"]) + "\n")
            self.descriptionDone = f"matrix.versions: {one_line(str(exc))}"
            return FAILURE
        labels = unique_labels(resolved)
        for spec, got in resolved:
            extra = f" @ {tips[spec.text][:12]}" if spec.text in tips else ""
            lines.append(f"{spec.text} -> {', '.join(got)}{extra}")
        cells = []
        for label in labels:
            spec = next(s for s, got in resolved if label in got)
            for profile in self.profiles:
                cell: dict[str, Any] = {"label": label, "profile": profile, "kind": spec.kind}
                if spec.kind == "branch":
                    cell.update(repo=spec.repo, repository=self.repos[spec.repo or ""],
                                branch=spec.branch, revision=tips[spec.text])
                else:
                    cell["version"] = label
                cells.append(cell)
        lines.append(f"{len(labels)} version(s) x {len(self.profiles)} profile(s) = "
                     f"{len(cells)} cells")
        await self.addCompleteLog("resolve", "\n".join(lines) + "\n")
        self.setProperty(CELLS_PROP, cells, "MatrixResolve")
        self.setProperty("matrix_versions", labels, "MatrixResolve")
        result = SUCCESS
        svc, why = self.records()
        run_id = None
        why_text = ""
        if svc is None:
            why_text = why or "no records service"
            result = WARNINGS
        else:
            try:
                run_id = await svc.start_matrix_run(
                    versions=labels, profiles=self.profiles, spec=" ".join(self.specs),
                    buildid=self.build.buildid,
                )
            except Exception as exc:  # the cells still build; only the run row is missing
                why_text = one_line(str(exc)) or type(exc).__name__
                result = WARNINGS
        if run_id is not None:
            self.setProperty(RUN_ID_PROP, run_id, "MatrixResolve")
        shown = ", ".join(labels) if len(labels) <= 6 else f"{', '.join(labels[:6])}, ..."
        self.descriptionDone = f"{len(cells)} cells: {shown} x {', '.join(self.profiles)}"
        if result == WARNINGS:
            self.descriptionDone += f" (no run row: {why_text})"
        return result


class MatrixFanOut(_MasterStep):
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

    async def run(self) -> int:
        cells = self.getProperty(CELLS_PROP) or []
        run_id = self.getProperty(RUN_ID_PROP)
        self.total = len(cells)
        self.updateSummary()
        tasks = [defer.ensureDeferred(self._one(c, run_id)) for c in cells]
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


class MatrixFinish(_MasterStep):
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
        self.descriptionDone = self.text
        return SUCCESS

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
    releases_url: str | None = None,
    mirror: str | None = None,
    dashboard_url: str | None = None,
) -> BuildFactory:
    """The parent build: resolve → cells → finish."""
    factory = BuildFactory()
    factory.addSteps([
        MatrixResolve(specs=specs, profiles=profiles, repos=repos, releases_url=releases_url,
                      mirror=mirror),
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

