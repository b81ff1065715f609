"""When a records write is worth trying again, and how long to keep trying (no Twisted).

A write fails for two kinds of reasons. The row itself may be wrong
(:class:`~master.records.db.InvalidRecord`): trying again gives the same
answer, so the caller hears it at once. Or the database is not answering as a
writer right now: another process holds SQLite's write lock, the file or
server is read-only, the disk reports I/O errors, the server refuses
connections or is restarting. Those are *transient*: the row is kept and
written later, first by retrying with backoff, then from the spool.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import exc as sa_exc

from master.records.db import InvalidRecord, RecordsError


class RecordsUnavailable(RecordsError):
    """The service is up but has no database connection yet (it keeps trying to open it)."""


# DBAPI error classes a database raises while it cannot take a write right now:
# OperationalError (SQLite: locked, busy, read-only, disk I/O, cannot open the file;
# PostgreSQL: connection refused or lost, shutting down, disk full), InternalError
# (PostgreSQL: read-only transaction), InterfaceError (connection closed under us).
_TRANSIENT = (
    RecordsUnavailable,
    sa_exc.OperationalError,
    sa_exc.InternalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,  # no pooled connection came free in time
)


def is_transient(exc: BaseException) -> bool:
    """True when the same write may succeed later; False for a bad row or a bug."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, InvalidRecord):
            return False
        if isinstance(cur, _TRANSIENT):
            return True
        if isinstance(cur, sa_exc.DBAPIError) and cur.connection_invalidated:
            return True
        # db.upgrade and db.current_revision wrap OperationalError in RecordsError.
        cur = cur.__cause__
    return False


def describe(exc: BaseException) -> str:
    """One short line saying what the database answered (the driver's words, no SQL)."""
    orig = getattr(exc, "orig", None)
    if orig is None and exc.__cause__ is not None:
        orig = getattr(exc.__cause__, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    line = text[0].strip() if text else ""
    return line or type(exc).__name__


@dataclass(frozen=True)
class Backoff:
    """Delays between attempts of one write: ``first``, doubling, at most ``longest``,
    until ``budget`` seconds have passed since the first attempt; the last attempt
    starts at the end of the budget.

    The defaults keep a record step under about 25 s when the database stays
    unwritable (the budget plus one attempt): a locked SQLite file makes each
    attempt wait ``busy_timeout`` (5 s, :mod:`master.records.service`), so four
    or five attempts fit; a refused connection fails at once, so about eight
    do. That is long enough to ride out a checkpoint, a backup's lock or a
    server restart, and short enough that the build (which still holds its LLC
    reservation during the record step) is not kept waiting for a database
    that is really down: then the spool takes over.
    """

    budget: float = 20.0
    first: float = 0.5
    longest: float = 5.0

    def delays(self) -> Iterator[float]:
        delay = self.first
        while True:
            yield delay
            delay = min(delay * 2, self.longest)
