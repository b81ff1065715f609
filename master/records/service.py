"""The records database as a Buildbot service: steps call it, it writes off the reactor.

The records part of the configuration adds it to ``c['services']`` under the
name :data:`ktstr_steps.buildsteps.services.RECORDS_SERVICE_NAME`; the record
and matrix steps find it by that name at run time
(``ktstr_steps.buildsteps.services.find_records_service``) and use what its
Protocol lists: ``record``, ``start_matrix_run``, ``finish_matrix_run``.

Every database call runs in the service's own thread pool (never the reactor
thread, never Buildbot's DB pool), so a slow or locked records DB cannot stall
the master or Buildbot's own queries.

No row is lost:

* :meth:`RecordsService.record` retries a write the database cannot take now
  (:func:`master.records.retry.is_transient`) with backoff for
  ``retry_budget`` seconds, then puts the row in the spool
  (:mod:`master.records.spool`, ``<master basedir>/records-spool``) and fails
  with :class:`RowSpooled`: the record step says "recorded late". While rows
  wait there (the database is known to be down), a new row gets one attempt
  before it joins them, so builds are not held up one after another.
* every ``flush_interval`` seconds, and at start, the service opens the
  database if it could not yet, writes the spooled rows oldest first (each
  removed only once written) and reconciles finished builds that ended without
  their record step (:mod:`master.records.unrecorded`).
* a database that cannot be reached when the master starts does not stop the
  master: the service starts, logs why, and keeps trying.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from buildbot import config as bbconfig
from buildbot.util import service
from sqlalchemy.engine import Engine
from twisted.internet import defer, task, threads
from twisted.python import log
from twisted.python.threadpool import ThreadPool

from ktstr_steps.buildsteps.services import RECORDS_SERVICE_NAME as SERVICE_NAME
from ktstr_steps.buildsteps.services import services_of
from master.records import compare, db, queries, retry, rows
from master.records.retry import Backoff, RecordsUnavailable
from master.records.spool import SPOOL_DIRNAME, Spool, SpoolError
from master.records.unrecorded import UnrecordedBuilds

# How long one SQLite write waits for another process's lock before it counts as a
# failed attempt: short, so that the retry budget is spent on several attempts and a
# flush never occupies the service's only SQLite thread for long.
BUSY_TIMEOUT = 5.0
# Seconds between attempts to open the database / write the spool / reconcile.
FLUSH_INTERVAL = 5.0

T = TypeVar("T")


class RowSpooled(db.RecordsError):
    """The database could not take the row within the retry budget; it is in the spool and
    will be written when the database is back. ``why`` is what the database answered."""

    spooled = True

    def __init__(self, why: str, waiting: int, spool: Path) -> None:
        self.why = why
        self.waiting = waiting
        self.spool_dir = spool
        super().__init__(
            f"recorded late: {why}; row spooled, written when the database is back "
            f"({waiting} row(s) waiting in {spool})"
        )


class RecordsService(service.BuildbotService):
    """Owns the records engine, a small thread pool and the spool; upgrades the schema on start."""

    name = SERVICE_NAME

    def checkConfig(  # type: ignore[override]
        self,
        db_url: str | None = None,
        threads: int | None = None,
        name: str | None = None,
        spool_dir: str | None = None,
        retry_budget: float | None = None,
        alerts: compare.AlertRules | None = None,
    ) -> None:
        if alerts is not None and not isinstance(alerts, compare.AlertRules):
            bbconfig.error(f"{SERVICE_NAME}: alerts must be AlertRules, got {alerts!r}")
        try:
            db.parse_url(db_url if db_url is not None else db.default_url())
        except db.RecordsError as exc:
            bbconfig.error(str(exc))
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            bbconfig.error(f"{SERVICE_NAME}: threads must be a positive integer, got {threads!r}")
        if retry_budget is not None and (
            isinstance(retry_budget, bool)
            or not isinstance(retry_budget, int | float)
            or not 0 <= retry_budget <= 600
        ):
            bbconfig.error(
                f"{SERVICE_NAME}: retry_budget must be seconds between 0 and 600, "
                f"got {retry_budget!r}"
            )

    def __init__(
        self,
        db_url: str | None = None,
        threads: int | None = None,
        name: str | None = None,
        spool_dir: str | None = None,
        retry_budget: float | None = None,
        alerts: compare.AlertRules | None = None,
    ) -> None:
        super().__init__(
            db_url=db_url,
            threads=threads,
            name=name or SERVICE_NAME,
            spool_dir=spool_dir,
            retry_budget=retry_budget,
            alerts=alerts,
        )
        self.alert_rules = alerts or compare.AlertRules()
        self.db_url: str | None = None
        self.threads: int | None = None
        self.engine: Engine | None = None
        self.spool: Spool | None = None
        self.backoff = Backoff()
        self.flush_interval = FLUSH_INTERVAL
        self.busy_timeout = BUSY_TIMEOUT
        self.unrecorded: UnrecordedBuilds | None = None
        self._pool: ThreadPool | None = None
        self._open_error = "not opened yet"
        self._loop: task.LoopingCall | None = None
        self._loop_done: defer.Deferred | None = None
        self._busy = False
        self._waiting_said: tuple[str, float] = ("", 0.0)

    # ------------------------------------------------------------ lifecycle

    @defer.inlineCallbacks
    def reconfigService(  # type: ignore[override]
        self,
        db_url: str | None = None,
        threads: int | None = None,
        name: str | None = None,
        spool_dir: str | None = None,
        retry_budget: float | None = None,
        alerts: compare.AlertRules | None = None,
    ):
        self.alert_rules = alerts or compare.AlertRules()
        new_url = db_url if db_url is not None else db.default_url()
        changed = (new_url, threads) != (self.db_url, self.threads)
        self.db_url, self.threads = new_url, threads
        if retry_budget is not None:
            self.backoff = dataclasses.replace(self.backoff, budget=float(retry_budget))
        self.spool = self._make_spool(spool_dir)
        if changed and self._pool is not None:
            # A new URL on reconfig: switch databases without a master restart.
            yield self._close()
            yield self._open()

    def _make_spool(self, spool_dir: str | None) -> Spool | None:
        if spool_dir is not None:
            return Spool(spool_dir)
        basedir = getattr(self.master, "basedir", None)
        # Without a master basedir (a service started on its own) there is nowhere durable.
        return Spool(Path(basedir) / SPOOL_DIRNAME) if basedir else None

    @defer.inlineCallbacks
    def startService(self):
        yield super().startService()  # runs the first reconfigService
        yield self._open()
        if self.spool is not None:
            self.spool.clean_partial()
            waiting = len(self.spool)
            if waiting:
                log.msg(f"{SERVICE_NAME}: {waiting} row(s) spooled in {self.spool.directory} "
                        "by an earlier run; writing them")
        if UnrecordedBuilds.usable(self.master):
            self.unrecorded = UnrecordedBuilds(self)
            yield defer.ensureDeferred(self.unrecorded.start())
        self._loop = task.LoopingCall(lambda: defer.ensureDeferred(self._tick()))
        self._loop.clock = self._clock()
        self._loop_done = self._loop.start(self.flush_interval, now=True)

    @defer.inlineCallbacks
    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self.unrecorded is not None:
            yield defer.ensureDeferred(self.unrecorded.stop())
            self.unrecorded = None
        yield self._close()
        yield super().stopService()

    def _clock(self) -> Any:
        master_reactor = getattr(self.master, "reactor", None)
        if master_reactor is not None:
            return master_reactor
        from twisted.internet import reactor

        return reactor

    def _pool_size(self) -> int:
        if self.threads is not None:
            return self.threads
        # One SQLite writer at a time avoids "database is locked"; a server takes more.
        return 1 if db.parse_url(self.db_url or "").get_backend_name() == "sqlite" else 4

    @defer.inlineCallbacks
    def _open(self):
        """Start the pool and connect; a database that cannot be reached now is retried
        by the flush loop (the master still starts), a wrong URL or driver is an error."""
        pool = ThreadPool(minthreads=0, maxthreads=self._pool_size(), name=SERVICE_NAME)
        pool.start()
        self._pool = pool
        try:
            yield self._connect_engine()
        except Exception as exc:
            if not retry.is_transient(exc):
                self._pool = None
                pool.stop()
                raise
            log.msg(f"{SERVICE_NAME}: records database {db.safe_url(self.db_url or '')} "
                    f"not available ({self._open_error}); rows are spooled until it is")

    @defer.inlineCallbacks
    def _connect_engine(self):
        from twisted.internet import reactor

        assert self._pool is not None
        try:
            engine = yield threads.deferToThreadPool(
                reactor, self._pool, self._connect, self.db_url, self.busy_timeout
            )
        except Exception as exc:
            self._open_error = retry.describe(exc)
            raise
        self.engine = engine
        log.msg(f"{SERVICE_NAME}: records database {db.safe_url(engine.url)} ready")

    @staticmethod
    def _connect(url: str, busy_timeout: float) -> Engine:
        engine = db.make_engine(url, busy_timeout=busy_timeout)
        try:
            db.upgrade(engine)
        except Exception:
            engine.dispose()
            raise
        return engine

    @defer.inlineCallbacks
    def _close(self):
        pool, engine = self._pool, self.engine
        self._pool, self.engine = None, None
        if pool is not None:
            # ThreadPool.stop() joins its threads; do that off the reactor so an in-flight
            # write finishes without freezing the master.
            yield threads.deferToThread(pool.stop)
        if engine is not None:
            engine.dispose()

    # ------------------------------------------------------------ the loop

    async def _tick(self) -> None:
        """Open the database if needed, write the spool, reconcile; never raises (a raise
        would stop the LoopingCall for good)."""
        if self._busy:
            return
        self._busy = True
        try:
            if self.engine is None and self._pool is not None:
                try:
                    await self._connect_engine()
                except Exception as exc:
                    if not retry.is_transient(exc):
                        log.err(exc, f"{SERVICE_NAME}: cannot open the records database")
                    return
            await self.flush()
            if self.unrecorded is not None and self.unrecorded.reconcile_pending:
                await self.unrecorded.reconcile()
        except Exception as exc:
            log.err(exc, f"{SERVICE_NAME}: background records work failed")
        finally:
            self._busy = False

    async def flush(self) -> int:
        """Write the spooled rows, oldest first; each leaves the spool only once written.

        Stops at the first row the database cannot take now (the next tick goes on);
        a row it refuses as invalid is moved to ``rejected/``. Returns rows written.
        """
        spool = self.spool
        if spool is None or self.engine is None:
            return 0
        written = 0
        for entry in spool.entries():
            if isinstance(entry, tuple):
                path, why = entry
                spool.reject(path, why)
                log.msg(f"{SERVICE_NAME}: spooled file {path.name} moved to rejected/: {why}")
                continue
            try:
                rowid = await self._run(compare.insert_compared, entry.row, self._rules())
            except Exception as exc:
                if retry.is_transient(exc):
                    self._say_waiting(len(spool), retry.describe(exc))
                    break
                spool.reject(entry.path, f"{type(exc).__name__}: {exc}")
                log.msg(f"{SERVICE_NAME}: spooled row of build {entry.buildid} refused, moved "
                        f"to {spool.rejected_dir}: {exc}")
                continue
            spool.remove(entry.path)
            written += 1
            log.msg(f"{SERVICE_NAME}: spooled row of build {entry.buildid} written late as row "
                    f"{rowid} (spooled {entry.spooled_at}: {entry.why})")
        if written:
            log.msg(f"{SERVICE_NAME}: {written} spooled row(s) written, {len(spool)} left")
            if self.unrecorded is not None:
                # Finished builds seen while the database was down may still lack a row.
                self.unrecorded.reconcile_pending = True
        return written

    def _say_waiting(self, waiting: int, why: str) -> None:
        # Once a minute, or when the answer changes: an outage of hours stays readable.
        now = self._clock().seconds()
        if why != self._waiting_said[0] or now - self._waiting_said[1] >= 60:
            self._waiting_said = (why, now)
            log.msg(f"{SERVICE_NAME}: {waiting} spooled row(s) wait for the database ({why})")

    def status(self) -> dict[str, Any]:
        """What an operator asks first: is the database open, how many rows wait."""
        return {
            "database": db.safe_url(self.db_url or ""),
            "open": self.engine is not None,
            "last_error": None if self.engine is not None else self._open_error,
            "spool": str(self.spool.directory) if self.spool is not None else None,
            "spooled": len(self.spool) if self.spool is not None else 0,
            "rejected": self.spool.rejected() if self.spool is not None else 0,
        }

    # ------------------------------------------------------------ calls

    def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        from twisted.internet import reactor

        if self._pool is None:
            return defer.fail(
                db.RecordsError(f"{SERVICE_NAME} is not running; nothing was recorded")
            )
        if self.engine is None:
            return defer.fail(RecordsUnavailable(
                f"records database not available: {self._open_error}"))
        return threads.deferToThreadPool(reactor, self._pool, fn, self.engine, *args, **kwargs)

    def record(self, row: Mapping[str, Any]) -> defer.Deferred[int]:
        """Insert one build row, or update the row with the same buildid; fires with its id.

        The row is validated first, on the caller's thread, so a bad row fails
        with :class:`~master.records.db.InvalidRecord` before any thread hop and
        is never retried. A database that cannot take the row is retried with
        backoff; after ``retry_budget`` seconds the row goes to the spool and the
        Deferred fails with :class:`RowSpooled` (the row will still be written).
        """
        try:
            clean = rows.validate_build_row(row)
        except db.InvalidRecord:
            return defer.fail()
        return defer.ensureDeferred(self._write(clean))

    async def _write(self, clean: dict[str, Any]) -> int:
        if self._pool is None:
            raise db.RecordsError(f"{SERVICE_NAME} is not running; nothing was recorded")
        clock = self._clock()
        began = clock.seconds()
        # Rows already wait: the database is down; one attempt, then join them.
        waiting = self.spool is not None and len(self.spool) > 0
        what = f"row of build {clean.get('buildid', '(no build id)')}"
        why = ""
        for delay in self.backoff.delays():
            try:
                rowid = await self._run(compare.insert_compared, clean, self._rules())
            except Exception as exc:
                # Stopped while retrying (the master shuts down): the spool keeps the row.
                stopped = self._pool is None
                if not stopped and not retry.is_transient(exc):
                    raise
                why = "the records service stopped" if stopped else retry.describe(exc)
                left = self.backoff.budget - (clock.seconds() - began)
                if stopped or waiting or left <= 0:
                    break
                # The last attempt comes at the end of the budget, not a delay before it.
                delay = min(delay, left)
                log.msg(f"{SERVICE_NAME}: {what} not written ({why}); again in {delay:.1f}s")
                await task.deferLater(clock, delay)
            else:
                if waiting:
                    # The database answers again: write what waits without waiting a tick.
                    defer.ensureDeferred(self._tick())
                return rowid
        if self.spool is None:
            raise db.RecordsError(f"not recorded after {clock.seconds() - began:.0f}s: {why}")
        try:
            self.spool.put(clean, why=why)
        except SpoolError as exc:
            raise db.RecordsError(f"not recorded: {why}; and {exc}") from exc
        n = len(self.spool)
        log.msg(f"{SERVICE_NAME}: {what} spooled after {clock.seconds() - began:.1f}s ({why}); "
                f"{n} row(s) wait in {self.spool.directory}")
        raise RowSpooled(why, n, self.spool.directory)

    def start_matrix_run(
        self,
        *,
        versions: list[str],
        profiles: list[str],
        spec: str | None = None,
        buildid: int | None = None,
        started_at: dt.datetime | float | str | None = None,
    ) -> defer.Deferred[int]:
        """Create the run row before fanning out; fires with the id cells record as
        ``matrix_run_id``."""
        return self._run(
            queries.start_matrix_run,
            versions=versions,
            profiles=profiles,
            spec=spec,
            buildid=buildid,
            started_at=started_at,
        )

    def finish_matrix_run(
        self,
        run_id: int,
        *,
        finished_at: dt.datetime | float | str | None = None,
        totals: Mapping[str, int] | None = None,
    ) -> defer.Deferred[dict[str, Any]]:
        """Close the run; totals default to counts over its recorded cells."""
        return self._run(queries.finish_matrix_run, run_id, finished_at=finished_at, totals=totals)

    def _rules(self) -> compare.AlertRules:
        return getattr(self, "alert_rules", None) or compare.AlertRules()

    def get_row(self, rowid: int) -> defer.Deferred[dict[str, Any] | None]:
        """The written row by its id (the record step reads the alerts it tripped)."""
        return self._run(queries.get_build, id=rowid)

    def recent_branches(self, since: float) -> defer.Deferred[list[tuple[str, str]]]:
        """(repository, branch) built since ``since`` (epoch seconds), matrix cells aside."""
        return self._run(queries.recent_branches, since)

    def matrix_changes(self, run_id: int) -> defer.Deferred[dict[str, Any]]:
        """What changed since the run before ``run_id``: ``previous`` (its id or None),
        ``broke`` and ``fixed`` ((version, profile) cells), as on the run's page."""
        return self._run(queries.matrix_changes, run_id)

    def query(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        """Run any ``queries`` function (engine first) in the service's pool."""
        return self._run(fn, *args, **kwargs)


def get_records_service(master: Any) -> RecordsService | None:
    """The configured records service of a master, or None when master.cfg has none."""
    named = services_of(master)
    svc = named.get(SERVICE_NAME)
    if isinstance(svc, RecordsService):
        return svc
    # A service registered under another name is still found by type.
    for candidate in named.values():
        if isinstance(candidate, RecordsService):
            return candidate
    return None
