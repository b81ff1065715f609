"""``ktstr-ci records``: list recent rows of the records database (no Buildbot needed).

Data on stdout (a text table, or with ``--json`` one ``{"builds": [...]}``
object); ``--spool`` lists the rows the master keeps in its spool while the
database cannot take them, without opening the database. Problems such as a missing SQLite file become ``ktstr-ci: error: ...``
through :func:`launcher.cli.main`, never a traceback.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ktstr_steps.cli_values import int_at_least
from ktstr_steps.errors import KtstrError

# (header, row key, width): the columns a person scanning recent builds needs first.
_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("ID", "id", 5),
    ("BUILD", "buildid", 6),
    ("BRANCH", "branch", 20),
    ("REV", "revision", 12),
    ("PROFILE", "profile", 8),
    ("OUTCOME", "kernel_outcome", 20),
    ("RESULT", "result", 9),
    ("WORKER", "worker", 16),
    ("CPUS", "llc_cpus", 8),
    ("J", "make_jobs", 3),
    ("MAKE_S", "make_s", 7),
    ("STARTED (UTC)", "started_at", 16),
    ("CACHE KEY", "cache_key", 0),  # last column: never truncated
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "records",
        help="list recent kernel builds from the records database",
        description="List recent kernel builds recorded by the CI master, newest first.",
    )
    p.add_argument(
        "--db",
        metavar="URL",
        default=None,
        help="SQLAlchemy URL (default: $KTSTR_CI_RECORDS_URL, else sqlite under "
        "<checkout>/var/records.sqlite)",
    )
    p.add_argument("--branch", metavar="B", help="only builds of this branch")
    p.add_argument("--limit", metavar="N", type=int_at_least(1), default=20, help="rows (default 20)")
    p.add_argument("--json", action="store_true", help='one JSON object {"builds": [...]}')
    p.add_argument(
        "--spool",
        nargs="?",
        const="",
        metavar="DIR",
        help="instead of the database, list the rows the master spooled while the database "
        "could not take them (default DIR: <master basedir>/records-spool of the settings); "
        "works while the database is down",
    )
    p.add_argument(
        "--upgrade",
        action="store_true",
        help="create or migrate the schema first (for a server DB set up before the master)",
    )
    p.set_defaults(func=run)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "started_at":
        return value.strftime("%Y-%m-%d %H:%M")
    if key == "revision":
        return str(value)[:12]
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width text table; long values are cut with '…' so columns stay aligned."""
    lines = []
    header = []
    for title, _key, width in _COLUMNS:
        header.append(title.ljust(width) if width else title)
    lines.append("  ".join(header).rstrip())
    for row in rows:
        cells = []
        for _title, key, width in _COLUMNS:
            text = _cell(key, row.get(key))
            if width:
                if len(text) > width:
                    text = text[: width - 1] + "…"
                text = text.ljust(width)
            cells.append(text)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def spool_dir(given: str) -> Path:
    """The spool directory: the one given, else the one of the master in the settings."""
    if given:
        return Path(given)
    import settings
    from master.records.spool import SPOOL_DIRNAME

    try:
        return settings.load().master.basedir / SPOOL_DIRNAME
    except settings.SettingsError as exc:
        raise KtstrError(f"cannot find the spool: {exc} (or pass --spool DIR)",
                         kind="usage") from exc


def run_spool(args: argparse.Namespace) -> int:
    from master.records.spool import Spool, SpooledRow

    spool = Spool(spool_dir(args.spool))
    rows, unreadable = [], []
    for entry in spool.entries():
        if isinstance(entry, SpooledRow):
            rows.append({"file": entry.path.name, "spooled_at": entry.spooled_at,
                         "why": entry.why, "row": entry.row})
        else:
            unreadable.append({"file": entry[0].name, "why": entry[1]})
    doc = {"spool": str(spool.directory), "spooled": rows, "unreadable": unreadable,
           "rejected": spool.rejected()}
    if args.json:
        print(json.dumps(doc, sort_keys=True))
        args.json_emitted = True
        return 0
    where = spool.directory
    if not rows and not unreadable:
        print(f"no rows spooled in {where}: every row reached the records database")
    else:
        print(f"{len(rows)} row(s) spooled in {where}, written when the records database "
              "takes them again:")
        for r in rows[: args.limit]:
            row = r["row"]
            print(f"  build {row.get('buildid', '-')}  {row.get('branch') or '-'}  "
                  f"{row.get('kernel_outcome') or '-'}  spooled {r['spooled_at'][:19]}: {r['why']}")
        for u in unreadable:
            print(f"  {u['file']}: {u['why']}")
    if doc["rejected"]:
        print(f"{doc['rejected']} row(s) the database refused are kept in "
              f"{spool.rejected_dir} (each with a .why file)")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.spool is not None:
        return run_spool(args)
    # Imported here: SQLAlchemy and alembic cost ~0.4 s, and every ktstr-ci
    # command on a worker builds this parser.
    from sqlalchemy.exc import SQLAlchemyError

    from master.records import db, queries

    url = args.db or db.default_url()
    engine = db.make_engine(url, must_exist=not args.upgrade)
    try:
        if args.upgrade:
            db.upgrade(engine)
        db.check_schema(engine)
        rows = queries.recent_builds(engine, limit=args.limit, branch=args.branch)
    except SQLAlchemyError as exc:
        raise db.RecordsError(
            f"cannot read records database {db.safe_url(url)}: {getattr(exc, 'orig', exc)}"
        ) from exc
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"builds": queries.jsonable(rows)}, indent=None, sort_keys=True))
        args.json_emitted = True
    elif rows:
        print(format_table(rows))
    else:
        where = f" on branch {args.branch}" if args.branch else ""
        print(f"no builds recorded{where} in {db.safe_url(url)}")
    return 0
