"""The records database as a Buildbot service: steps call it, it writes off the reactor.

In master.cfg::

    from master.records.service import RecordsService
    c["services"] = [RecordsService(db_url="postgresql+psycopg2://ci@db/records")]

and in a step::

    svc = get_records_service(self.master)
    if svc is not None:
        rowid = yield svc.record(row)

Every database call runs in the service's own thread pool (never the reactor
thread, never Buildbot's DB pool), so a slow or locked records DB cannot stall
the master or Buildbot's own queries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from buildbot import config as bbconfig
from buildbot.util import service
from sqlalchemy.engine import Engine
from twisted.internet import defer, threads
from twisted.python import log
from twisted.python.threadpool import ThreadPool

from master.records import db, queries

SERVICE_NAME = "ktstr_records"

T = TypeVar("T")


class RecordsService(service.BuildbotService):
    """Owns the records engine and a small thread pool; upgrades the schema on start."""

    name = SERVICE_NAME

    def checkConfig(  # type: ignore[override]
        self, db_url: str | None = None, threads: int | None = None, name: str | None = None
    ) -> None:
        try:
            db.parse_url(db_url if db_url is not None else db.default_url())
        except db.RecordsError as exc:
            bbconfig.error(str(exc))
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            bbconfig.error(f"{SERVICE_NAME}: threads must be a positive integer, got {threads!r}")

    def __init__(
        self, db_url: str | None = None, threads: int | None = None, name: str | None = None
    ) -> None:
        super().__init__(db_url=db_url, threads=threads, name=name or SERVICE_NAME)
        self.db_url: str | None = None
        self.threads: int | None = None
        self.engine: Engine | None = None
        self._pool: ThreadPool | None = None

    # ------------------------------------------------------------ lifecycle

    @defer.inlineCallbacks
    def reconfigService(  # type: ignore[override]
        self, db_url: str | None = None, threads: int | None = None, name: str | None = None
    ):
        new_url = db_url if db_url is not None else db.default_url()
        changed = (new_url, threads) != (self.db_url, self.threads)
        self.db_url, self.threads = new_url, threads
        if changed and self.engine is not None:
            # A new URL on reconfig: switch databases without a master restart.
            yield self._close()
            yield self._open()

    @defer.inlineCallbacks
    def startService(self):
        yield super().startService()  # runs the first reconfigService
        yield self._open()

    @defer.inlineCallbacks
    def stopService(self):
        yield self._close()
        yield super().stopService()

    def _pool_size(self) -> int:
        if self.threads is not None:
            return self.threads
        # One SQLite writer at a time avoids "database is locked"; a server takes more.
        return 1 if db.parse_url(self.db_url or "").get_backend_name() == "sqlite" else 4

    @defer.inlineCallbacks
    def _open(self):
        from twisted.internet import reactor

        pool = ThreadPool(minthreads=0, maxthreads=self._pool_size(), name=SERVICE_NAME)
        pool.start()
        self._pool = pool
        try:
            engine = yield threads.deferToThreadPool(reactor, pool, self._connect, self.db_url)
        except Exception:
            self._pool = None
            pool.stop()
            raise
        self.engine = engine
        log.msg(f"{SERVICE_NAME}: records database {db.safe_url(engine.url)} ready")

    @staticmethod
    def _connect(url: str) -> Engine:
        engine = db.make_engine(url)
        db.upgrade(engine)
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

    # ------------------------------------------------------------ calls

    def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        from twisted.internet import reactor

        if self._pool is None or self.engine is None:
            return defer.fail(
                db.RecordsError(f"{SERVICE_NAME} is not running; nothing was recorded")
            )
        return threads.deferToThreadPool(reactor, self._pool, fn, self.engine, *args, **kwargs)

    def record(self, row: Mapping[str, Any]) -> defer.Deferred[int]:
        """Insert one build row, or update the row with the same buildid; fires with its id.

        The row is validated first, on the caller's thread, so a bad row fails
        with :class:`~master.records.db.InvalidRecord` before any thread hop.
        """
        try:
            clean = queries.validate_build_row(row)
        except db.InvalidRecord:
            return defer.fail()
        return self._run(queries.insert_build, clean)

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

    def query(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        """Run any ``queries`` function (engine first) in the service's pool."""
        return self._run(fn, *args, **kwargs)


def get_records_service(master: Any) -> RecordsService | None:
    """The configured records service of a master, or None when master.cfg has none.

    Buildbot 4.3 keeps ``c['services']`` under ``master.service_manager.namedServices``
    (not ``master.namedServices``; buildbot.md §2.5 pitfall 4).
    """
    manager = getattr(master, "service_manager", None)
    named = getattr(manager, "namedServices", None) or {}
    svc = named.get(SERVICE_NAME)
    if isinstance(svc, RecordsService):
        return svc
    # A service registered under another name is still found by type.
    for candidate in named.values():
        if isinstance(candidate, RecordsService):
            return candidate
    return None
