"""The ``ktstr-ci`` command: one argparse tree, each area registering its own subcommands.

Diagnostics go to stderr, data to stdout; ``--json`` output is one object on
stdout. A :class:`~ktstr_steps.errors.KtstrError` becomes ``ktstr-ci: error: ...``
and exit status 1; argparse usage errors exit 2 (as clap does for ktstr).
"""

from __future__ import annotations

import argparse
import json
import sys

from ktstr_steps.errors import KtstrError
from ktstr_steps.messages import LABEL


def build_parser() -> argparse.ArgumentParser:
    from ktstr_steps import cli_holder, cli_host, cli_kernel

    parser = argparse.ArgumentParser(
        prog=LABEL,
        description="ktstr's kernel build pipeline as a command and as CI worker phases.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli_kernel.register(sub)
    cli_host.register(sub)
    cli_holder.register(sub)
    try:
        from master import cli_records
    except ImportError:  # a worker-only install has no master package
        cli_records = None
    if cli_records is not None:
        cli_records.register(sub)
    try:
        from workers import cli_workers
    except ImportError:
        cli_workers = None
    if cli_workers is not None:
        cli_workers.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KtstrError as exc:
        print(f"{LABEL}: error: {exc}", file=sys.stderr)
        if getattr(args, "json", False) and not getattr(args, "json_emitted", False):
            print(json.dumps({"ok": False, "errors": [{"kind": exc.kind, "message": str(exc)}]}))
        return 1
    except KeyboardInterrupt:
        print(f"{LABEL}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
