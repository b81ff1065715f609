"""``ktstr-ci records``: list recent rows of the records database (no Buildbot needed).

Data on stdout (a text table, or with ``--json`` one ``{"builds": [...]}``
object); problems such as a missing SQLite file become ``ktstr-ci: error: ...``
through :func:`ktstr_steps.cli.main`, never a traceback.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ktstr_steps.util import int_at_least

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


def run(args: argparse.Namespace) -> int:
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
