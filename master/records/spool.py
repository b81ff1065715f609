"""Rows waiting for the records database: one JSON file per row, in the master's basedir.

When the database cannot take a row for the whole retry budget, the records
service puts the validated row here and writes it when the database answers
again, oldest first. The spool is a directory, not one file, so that adding
and removing a row are each one atomic filesystem operation:

* :meth:`Spool.put` writes ``.tmp-<name>``, fsyncs it, renames it to
  ``<name>.json`` and fsyncs the directory: after it returns, the row survives
  a master crash or power loss, and a crash before the rename leaves only a
  ``.tmp-`` file, which is ignored and cleaned up.
* :meth:`Spool.remove` unlinks the file once the row is in the database. A
  crash between the database commit and the unlink writes the row again on
  the next flush; rows are keyed by Buildbot's build id, so that is an update
  of the same row, never a second one.

Names are ``<nanoseconds>-<pid>-<sequence>.json``, so sorting them is the
order the rows were spooled in. A file that cannot be read back as a row
(truncated by a full disk, edited by hand) or a row the database refuses as
invalid is moved to ``rejected/`` with the reason beside it, never dropped
silently and never allowed to hold up the rows behind it.

No Twisted here: the service calls these from the reactor (they are a few
small files) and the ``ktstr-ci records --spool`` command reads the same directory.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from master.records import queries

# The spool directory under the master's basedir (Buildbot's own files live there too).
SPOOL_DIRNAME = "records-spool"
REJECTED_DIRNAME = "rejected"
FORMAT = 1


@dataclass(frozen=True)
class SpooledRow:
    """One spooled row: the validated row, how to write it, why it waits."""

    path: Path
    row: dict[str, Any]
    replace: bool
    why: str
    spooled_at: str

    @property
    def buildid(self) -> int | None:
        value = self.row.get("buildid")
        return value if isinstance(value, int) else None


class SpoolError(OSError):
    """The spool directory or one of its files could not be written."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The rows of one spool directory (created on the first :meth:`put`)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._seq = itertools.count()

    def __repr__(self) -> str:
        return f"Spool({str(self.directory)!r})"

    @property
    def rejected_dir(self) -> Path:
        return self.directory / REJECTED_DIRNAME

    def _names(self) -> list[Path]:
        try:
            return sorted(
                p for p in self.directory.iterdir()
                if p.suffix == ".json" and not p.name.startswith(".") and p.is_file()
            )  # fmt: skip
        except FileNotFoundError:
            return []

    def __len__(self) -> int:
        return len(self._names())

    def put(self, row: Mapping[str, Any], *, replace: bool = True, why: str = "") -> Path:
        """Append one row durably; returns its file. Raises :class:`SpoolError`."""
        doc = {
            "format": FORMAT,
            "row": queries.jsonable(dict(row)),
            "replace": replace,
            "why": why,
            "spooled_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):06d}.json"
        final = self.directory / name
        tmp = self.directory / f".tmp-{name}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(doc, f, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(self.directory)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SpoolError(f"cannot spool the row in {self.directory}: {exc}") from exc
        return final

    def read(self, path: Path) -> SpooledRow:
        """One spooled file as a row; ValueError when it is not one."""
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not isinstance(doc.get("row"), dict):
            raise ValueError("not a spooled row (no \"row\" object)")
        if doc.get("format") != FORMAT:
            raise ValueError(f"unknown spool format {doc.get('format')!r}")
        return SpooledRow(
            path=path,
            row=doc["row"],
            replace=bool(doc.get("replace", True)),
            why=str(doc.get("why") or ""),
            spooled_at=str(doc.get("spooled_at") or ""),
        )

    def entries(self) -> list[SpooledRow | tuple[Path, str]]:
        """Every spooled row, oldest first; unreadable files as ``(path, why)``."""
        out: list[SpooledRow | tuple[Path, str]] = []
        for path in self._names():
            try:
                out.append(self.read(path))
            except FileNotFoundError:
                continue  # written meanwhile by a flush that was already running
            except (OSError, ValueError) as exc:
                out.append((path, f"unreadable spool file: {exc}"))
        return out

    def buildids(self) -> set[int]:
        """Build ids of the rows waiting here (a row for them is on its way)."""
        return {
            e.buildid for e in self.entries() if isinstance(e, SpooledRow) and e.buildid is not None
        }

    def remove(self, path: Path) -> None:
        """Forget a row that is now in the database."""
        path.unlink(missing_ok=True)
        try:
            _fsync_dir(self.directory)
        except OSError:
            pass  # the row is written; at worst it is written again (same buildid: an update)

    def reject(self, path: Path, why: str) -> Path:
        """Move a row the database will never take to ``rejected/``, with the reason beside it."""
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        dest = self.rejected_dir / path.name
        os.replace(path, dest)
        dest.with_suffix(".why").write_text(why.rstrip() + "\n", encoding="utf-8")
        _fsync_dir(self.directory)
        return dest

    def rejected(self) -> int:
        try:
            return sum(1 for p in self.rejected_dir.iterdir() if p.suffix == ".json")
        except FileNotFoundError:
            return 0

    def clean_partial(self) -> int:
        """Remove ``.tmp-`` files a crash left mid-write (their rows were never acknowledged)."""
        n = 0
        try:
            for p in self.directory.glob(".tmp-*"):
                p.unlink(missing_ok=True)
                n += 1
        except FileNotFoundError:
            pass
        return n
