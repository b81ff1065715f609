"""Rows for builds that ended without their record step (worker lost, master gone).

The record step writes a kernel build's row, but only a build that reaches it
can: once the worker connection is lost Buildbot runs no further step (not
even ``alwaysRun`` ones) and ends the build RETRY; when the master dies, the
next master start finishes its builds as RETRY before any service of ours is
up. So the records service also writes rows from the master's side, from what
Buildbot kept of the build (its properties, times, result and steps):

* **finished builds**: it consumes Buildbot's ``('builds', None, 'finished')``
  messages; ``grace`` seconds after one (the record step's own write has long
  finished by then: a build ends after its last step), a kernel build without
  a row gets one;
* **at start, and again whenever a write had to wait for the database**: it
  reconciles the recent finished builds (the last ``days`` days, at most
  ``limit`` per builder) of the kernel builders against the records and fills
  the gaps. This covers builds a crashed master left (finished RETRY by
  Buildbot's housekeeping before this service starts) and finished messages
  that came while the records database was down.

The row's ``kernel_outcome`` is ``interrupted``; ``result`` is Buildbot's
(``retry``, ``exception``, ``cancelled``, ...); ``error`` says where the build
stopped. It is written with ``replace=False``: it never overwrites a row, and
the record step's row (written directly or later from the spool, always with
``replace=True``) overwrites it. Whichever comes first, one row per build id,
and the step's when there is one.

A *kernel builder* is a builder of the master's current configuration whose
factory has a step that writes the build's records row (the class attribute
``writes_build_record`` of :class:`ktstr_steps.buildsteps.record.Record`). That
is exactly the builds that should have a row: push and forced kernel builds,
try builds, pollers and matrix cells, not the matrix fan-out or stand-in
factories. A builder no longer in the configuration is not looked at.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from buildbot.data import resultspec
from buildbot.process.results import CANCELLED, EXCEPTION, RETRY, statusToString
from twisted.internet import defer
from twisted.python import log

from ktstr_steps.results import PHASES
from master.records import queries, retry, rows
from master.records.db import InvalidRecord

if TYPE_CHECKING:
    from master.records.service import RecordsService

OUTCOME = "interrupted"

# Why a build ends without its record step, by Buildbot result.
_WHY = {
    RETRY: "the worker or the master was lost; Buildbot retries the build",
    EXCEPTION: "an exception ended the build",
    CANCELLED: "the build was stopped before its record step",
}

# Properties copied to the row under the same name (what the steps set as they went).
_SAME_NAME = ("cache_key", "config_hash", "kconfig_hash", "extra_kconfig_hash", "dirty",
              "make_jobs", "make_warnings", "image_path", "entry_dir", "diff_hash",
              "repository", "host")  # fmt: skip
# Columns every interrupted row has; the rest are dropped if a property does not fit.
_CORE = ("buildid", "builderid", "build_number", "builder", "kernel_outcome", "result",
         "started_at", "finished_at", "error")  # fmt: skip


def records_builders(config: Any) -> set[str]:
    """Names of the configured builders whose factory has a records-writing step."""
    names = set()
    for builder in getattr(config, "builders", None) or []:
        steps = getattr(getattr(builder, "factory", None), "steps", None) or []
        classes = [getattr(s, "step_class", None) for s in steps]
        if any(getattr(c, "writes_build_record", False) for c in classes):
            names.add(builder.name)
    return names


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(value) if isinstance(value, str) and value.strip() else None
    except ValueError:
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def interrupted_row(
    build: Mapping[str, Any],
    builder: str,
    props: Mapping[str, Any],
    last_step: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The row of a build that ended without its record step, from what Buildbot kept.

    ``build`` is the data API's build dict, ``props`` the build's properties as
    ``{name: value}``, ``last_step`` the data API dict of the last step that
    started (where the build stopped). Always a valid row: a property that does
    not fit its column is left out rather than losing the row.
    """
    results = build.get("results")
    why = _WHY.get(results, f"the build ended {statusToString(results)}"
                   if results is not None else "the build ended")  # fmt: skip
    where = ""
    if last_step:
        state = _text(last_step.get("state_string"))
        where = f" in step {last_step.get('name')}" + (f" ({state})" if state else "")
    revision = props.get("got_revision") or props.get("revision")
    if isinstance(revision, Mapping):  # multi-codebase builds: ours has one
        revision = next(iter(revision.values()), None)
    llcs = props.get("llcs")
    llc_index = _int(llcs[0]) if isinstance(llcs, list) and len(llcs) == 1 else _int(
        props.get("llc_index"))
    phases = props.get("phase_seconds")
    row: dict[str, Any] = {
        "buildid": build["buildid"],
        "builderid": _int(build.get("builderid")),
        "build_number": _int(build.get("number")),
        "builder": builder,
        "branch": _text(props.get("branch")),
        "revision": _text(revision),
        "kernel_version": _text(props.get("kernel_version")),
        "profile": _text(props.get("kernel_profile")) or _text(props.get("profile")),
        "worker": _text(props.get("workername")),
        "llc_index": llc_index,
        "llc_cpus": props.get("llc_cpus") or None,
        "kernel_outcome": OUTCOME,
        "result": results,
        "started_at": build.get("started_at"),
        "finished_at": build.get("complete_at"),
        "overrides_count": _int(props.get("config_overrides")),
        "dropped_count": _int(props.get("config_dropped")),
        "matrix_run_id": _int(props.get("matrix_run_id")),
        "error": f"ended without its record step{where}: {why}",
    }
    for name in _SAME_NAME:
        if props.get(name) is not None:
            row[name] = props[name]
    if isinstance(phases, Mapping):
        row["phases"] = {k: v for k, v in phases.items() if k in PHASES}
    try:
        return rows.validate_build_row(row)
    except InvalidRecord as exc:
        log.msg(f"records: build {build['buildid']}: some properties do not fit the row "
                f"and are left out ({exc})")
        core = {k: row[k] for k in _CORE}
        return rows.validate_build_row(core)


class UnrecordedBuilds:
    """The records service's watch on finished builds (see the module docstring)."""

    def __init__(self, service: RecordsService, *, grace: float = 5.0, days: float = 7.0,
                 limit: int = 200) -> None:
        self.service = service
        self.grace = grace
        self.days = days
        self.limit = limit
        self._consumer: Any = None
        self._timers: dict[int, Any] = {}
        # Set when a gap may exist that only a reconcile finds (start, a failed write).
        self.reconcile_pending = True

    @property
    def master(self) -> Any:
        return self.service.master

    @staticmethod
    def usable(master: Any) -> bool:
        """A real (or Buildbot test) master: with mq, the data API and a config."""
        return all(getattr(master, a, None) is not None for a in ("mq", "data", "config"))

    async def start(self) -> None:
        self._consumer = await self.master.mq.startConsuming(
            self._finished, ("builds", None, "finished")
        )

    async def stop(self) -> None:
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await defer.maybeDeferred(consumer.stopConsuming)

    def _finished(self, _key: tuple, build: dict[str, Any]) -> None:
        buildid = build.get("buildid")
        if not isinstance(buildid, int) or buildid in self._timers:
            return

        def later() -> None:
            self._timers.pop(buildid, None)
            d = defer.ensureDeferred(self.fill([build]))
            d.addErrback(log.err, f"records: row for finished build {buildid}")

        self._timers[buildid] = self.master.reactor.callLater(self.grace, later)

    async def builder_names(self) -> dict[int, str]:
        """builderid → name of the configured kernel builders."""
        wanted = records_builders(self.master.config)
        if not wanted:
            return {}
        builders = await self.master.data.get(("builders",))
        return {b["builderid"]: b["name"] for b in builders if b["name"] in wanted}

    async def fill(self, builds: list[dict[str, Any]],
                   names: dict[int, str] | None = None) -> int:
        """Write rows for those of ``builds`` (finished, of kernel builders) that have none.

        Returns how many rows were written. When the database cannot take them
        now, a reconcile is left pending: the next one finds these builds again
        in Buildbot's database (its own records of them are durable).
        """
        if names is None:
            names = await self.builder_names()
        builds = [b for b in builds if b.get("complete") and b.get("builderid") in names]
        if not builds:
            return 0
        spooled = self.service.spool.buildids() if self.service.spool is not None else set()
        builds = [b for b in builds if b["buildid"] not in spooled]
        try:
            have = await self.service.query(queries.recorded_buildids,
                                            [b["buildid"] for b in builds])
            written = 0
            for build in builds:
                if build["buildid"] in have:
                    continue
                row = await self._row(build, names[build["builderid"]])
                rowid = await self.service.query(queries.insert_build, row, replace=False)
                written += 1
                log.msg(f"records: build {build['buildid']} ({names[build['builderid']]}, "
                        f"{statusToString(build.get('results'))}) ended without its record step; "
                        f"wrote row {rowid} ({OUTCOME})")
        except Exception as exc:
            if not retry.is_transient(exc):
                raise
            self.reconcile_pending = True
            log.msg(f"records: rows for builds that ended without their record step wait "
                    f"for the database ({retry.describe(exc)})")
            return 0
        return written

    async def _row(self, build: dict[str, Any], builder: str) -> dict[str, Any]:
        buildid = build["buildid"]
        raw = await self.master.data.get(("builds", buildid, "properties")) or {}
        props = {k: v[0] if isinstance(v, list | tuple) else v for k, v in raw.items()}
        steps = await self.master.data.get(("builds", buildid, "steps")) or []
        started = [s for s in steps if s.get("started_at") is not None]
        return interrupted_row(build, builder, props, started[-1] if started else None)

    async def reconcile(self) -> int:
        """Fill the gaps among recent finished builds of the kernel builders; clears the
        pending flag when the database took every row."""
        self.reconcile_pending = False
        names = await self.builder_names()
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=self.days)
        written = 0
        for builderid in names:
            builds = await self.master.data.get(
                ("builders", builderid, "builds"),
                filters=[resultspec.Filter("complete", "eq", [True])],
                order=("-buildid",),
                limit=self.limit,
            )
            recent = [b for b in builds
                      if b.get("complete_at") is None or b["complete_at"] >= cutoff]
            written += await self.fill(recent, names)
            if self.reconcile_pending:  # the database went away meanwhile
                break
        if written:
            log.msg(f"records: reconciled {written} finished build(s) that had no row")
        return written
