"""Record: one row per build in the records database, whatever happened to the build.

The row goes through the master's records service, found by its name at run
time (:mod:`ktstr_steps.buildsteps.services`); without one the step ends
WARNINGS with ``not recorded: no records service configured``.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from buildbot.process.results import (
    CANCELLED,
    EXCEPTION,
    FAILURE,
    SUCCESS,
    WARNINGS,
    statusToString,
)
from twisted.python import log

from ktstr_steps.buildsteps.base import (
    PHASE_SECONDS,
    StateFileStep,
    one_line,
)
from ktstr_steps.buildsteps.services import RecordsService, find_records_service
from ktstr_steps.cpulist import format_cpulist, parse_cpulist
from ktstr_steps.results import PHASES, BuildResult, Outcome

# Result-object fields copied to the row (and the build's properties) as they are.
_SAME_NAME = ("cache_key", "config_hash", "kconfig_hash", "extra_kconfig_hash", "dirty",
              "make_jobs", "make_warnings", "image_path", "entry_dir", "diff_hash")
# Identity and outputs, copied when the summary has them (a hit has no sizes or warnings).
_IDENTITY = ("identity", "explanation", "config_overrides", "config_dropped", "config_symbols",
             "bzimage_bytes", "vmlinux_bytes", "vmlinux_stripped_bytes")


def _cpus_text(value: Any) -> str | None:
    """``llc_cpus`` as the compact list form, whether it came as a list or as text."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            return format_cpulist(parse_cpulist(value))
        except ValueError:
            return value
    return format_cpulist(int(c) for c in value)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def read_summary(data: dict[str, Any] | None) -> tuple[BuildResult, str | None]:
    """``phase summary``'s answer as a result object, and why it could not be read (or None).

    No answer (the build never reached lookup, or the command printed nothing)
    is an empty result: the row then comes from the build's properties.
    """
    try:
        return BuildResult.from_json(data or {}), None
    except ValueError as exc:
        return BuildResult(), f"summary not recorded: {one_line(str(exc))}"


class Record(StateFileStep):
    """``ktstr-ci phase summary`` on the worker, merged with the build's properties, written
    through the records service. alwaysRun: failed and stopped builds are recorded too."""

    name = "record"
    description = ["recording"]
    # The records service writes an "interrupted" row for a build of a builder whose
    # factory has such a step when the build ends without running it (worker lost,
    # master gone); it finds these steps by this attribute, not by class identity,
    # because master.cfg re-imports the step modules on every reconfig.
    writes_build_record = True
    subcommand = ("phase", "summary")
    phase = ""
    alwaysRun = True
    haltOnFailure = False
    flunkOnFailure = False
    # An alert (a regression against the branch's earlier builds) ends the build WARNINGS.
    warnOnWarnings = True

    def __init__(self, *, records: RecordsService | None = None, **kwargs: Any) -> None:
        # Test seam and explicit wiring; None = look the service up on the master at run time.
        self.records = records
        super().__init__(**kwargs)

    async def run(self) -> int:
        summary: dict[str, Any] | None = None
        if "lookup" in (self.getProperty(PHASE_SECONDS) or {}):
            cmd = await self.makeRemoteShellCommand(command=self.command_argv())
            await self.runCommand(cmd)
            if not self.stopped:
                # Exit status is non-zero exactly when the outcome is "failed": the JSON counts.
                summary = (await self.read_answer())[0]
        # else: this build never reached lookup, which starts the state file; one in the
        # workdir is a previous build's and must not be recorded as this one.
        row = await self.build_row(*read_summary(summary))
        self.set_prop("kernel_outcome", row["kernel_outcome"])
        for name in ("cache_key", "image_path", "config_hash", "entry_dir", "diff_hash"):
            self.set_prop(name, row.get(name))
        await self.addCompleteLog("row", json.dumps(row, indent=2, sort_keys=True, default=str))
        result = await self.write(row)
        return CANCELLED if self.stopped else result

    async def write(self, row: dict[str, Any]) -> int:
        svc, why = (self.records, None) if self.records is not None else find_records_service(
            self.master)
        if svc is None:
            self.descriptionDone = f"not recorded: {why}"
            return WARNINGS
        try:
            rowid = await svc.record(row)
        except Exception as exc:
            if getattr(exc, "spooled", False):
                # The database could not take the row within the service's retry budget;
                # the service keeps it and writes it when the database is back. The kernel
                # build itself is fine: a warning, never a failure.
                why = one_line(str(getattr(exc, "why", "") or exc)) or type(exc).__name__
                self.descriptionDone = (
                    f"recorded late: {why}; row spooled, written when the database is back"
                )
                await self.addCompleteLog("recorded late", f"{exc}\n")
                return WARNINGS
            log.err(exc, "records service failed to write the kernel_builds row")
            self.descriptionDone = f"not recorded: {one_line(str(exc)) or type(exc).__name__}"
            return WARNINGS
        self.set_prop("record_id", rowid)
        text = f"recorded row {rowid} ({row['kernel_outcome']})"
        tripped = await self.alerts_of(svc, rowid)
        if tripped:
            self.set_prop("alerts", tripped)
            await self.addCompleteLog("alerts", "".join(f"{a}\n" for a in tripped))
            # A regression is worth a look, not a failed build: WARNINGS, saying which.
            self.descriptionDone = f"{text}; alert: {'; '.join(tripped)}"
            if row.get("result") == "success":
                # The row said how the build stood before this step; it ends WARNINGS now.
                row["result"] = "warnings"
                try:
                    await svc.record(row)
                except Exception as exc:
                    log.msg(f"record: row {rowid} keeps result success: {exc}")
            return WARNINGS
        self.descriptionDone = text
        return SUCCESS

    async def alerts_of(self, svc: RecordsService, rowid: int) -> list[str]:
        """The alerts the records service found for the written row ([] when it has none)."""
        get_row = getattr(svc, "get_row", None)
        if get_row is None:
            return []
        try:
            written = await get_row(rowid)
        except Exception as exc:  # the row is written; only the alert summary is lost
            log.msg(f"record: cannot read back row {rowid}: {exc}")
            return []
        found = (written or {}).get("alerts") or []
        return [str(a) for a in found]

    def outcome(self, summary: BuildResult) -> str:
        """The kernel outcome: the pipeline's word, else what the build's state implies."""
        outcome = summary.outcome or self.getProperty("kernel_outcome")
        results = getattr(self.build, "results", SUCCESS)
        stopped = getattr(self.build, "stopped", False) or results == CANCELLED or self.stopped
        if stopped and outcome in (None, Outcome.FAILED):
            return Outcome.CANCELLED.value
        return str(outcome or Outcome.FAILED)

    def first_failure(self) -> str | None:
        """The summary of the first failed step: what the UI shows as the reason."""
        for step in getattr(self.build, "executedSteps", []) or []:
            if step is not self and step.results in (FAILURE, EXCEPTION):
                text = step.getResultSummary().get("step")
                if text:
                    return f"{step.name}: {one_line(text)}"
        return None

    async def build_info(self) -> dict[str, Any]:
        try:
            return await self.master.data.get(("builds", self.build.buildid)) or {}
        except Exception as exc:  # the row is still worth writing without the times
            log.msg(f"record: cannot read build {self.build.buildid}: {exc}")
            return {}

    async def build_row(self, summary: BuildResult, problem: str | None = None) -> dict[str, Any]:
        """The row from the pipeline's summary (``problem``: why it could not be read)
        and the build's properties."""
        prop = self.getProperty
        info = await self.build_info()
        revision = prop("got_revision") or prop("revision")
        if isinstance(revision, dict):  # multi-codebase builds: ours has one
            revision = next(iter(revision.values()), None)
        llcs = summary.llcs or prop("llcs") or []
        llc_index = _int_or_none(llcs[0]) if llcs else _int_or_none(prop("llc_index"))
        phases = {**(prop(PHASE_SECONDS) or {}), **(summary.phases or {})}
        overrides = summary.overrides
        dropped = summary.dropped
        reported = summary.first_error()
        row: dict[str, Any] = {
            "buildid": self.build.buildid,
            "builderid": info.get("builderid"),
            "build_number": _int_or_none(prop("buildnumber")),
            "builder": prop("buildername"),
            "branch": prop("branch"),
            "revision": revision,
            "repository": prop("repository"),
            # A matrix cell of a branch has no release version: its cell label names it.
            "kernel_version": summary.version or prop("kernel_version"),
            "profile": summary.profile or prop("kernel_profile"),
            "worker": prop("workername"),
            "host": prop("host"),
            "llc_index": llc_index,
            "llc_cpus": _cpus_text(summary.llc_cpus or prop("llc_cpus")),
            "kernel_outcome": self.outcome(summary),
            "result": statusToString(getattr(self.build, "results", SUCCESS)),
            "started_at": info.get("started_at"),
            "finished_at": dt.datetime.fromtimestamp(self.master.reactor.seconds(), dt.UTC),
            "overrides_count": len(overrides) if overrides is not None
            else prop("config_overrides"),
            "dropped_count": len(dropped) if dropped is not None else prop("config_dropped"),
            "error": self.first_failure() or (one_line(reported) if reported else problem),
            # Set by the matrix fan-out on each cell it triggers (master/matrix.py).
            "matrix_run_id": _int_or_none(prop("matrix_run_id")),
        }
        for name in _SAME_NAME:
            value = getattr(summary, name)
            row[name] = value if value is not None else prop(name)
        for name in _IDENTITY:
            value = getattr(summary, name)
            if value is not None:
                row[name] = value
        if summary.build_warnings is not None:
            row["warnings"] = summary.build_warnings
        if row["kernel_outcome"] != Outcome.CACHE_HIT and not row.get("explanation"):
            # The lookup step's answer, for a build whose summary could not be read.
            row["explanation"] = prop("rebuild_explanation")
        for phase in PHASES:
            row[f"{phase}_s"] = phases.get(phase)
        return row
