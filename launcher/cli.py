"""The ``ktstr-ci`` command: one argparse tree, each area registering its own subcommands.

The pipeline registers ``kernel``, ``phase``, ``holder`` and the host
commands, the master ``records``, the workers ``workers list``, and the
launcher ``workers start|stop|status`` (``make run|stop|status``) and ``try``. The
assembly lives here because the launcher is the one package that may import
all of them.

Diagnostics go to stderr, data to stdout; ``--json`` output is one object on
stdout (``--result-file`` routes them for a step: see ``ktstr_steps.messages``). A :class:`~ktstr_steps.errors.KtstrError` becomes ``ktstr-ci: error: ...``
and exit status 1; argparse usage errors exit 2 (as clap does for ktstr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ktstr_steps import cli_holder, cli_host, cli_kernel, cli_trees, messages
from ktstr_steps.errors import KtstrError, os_error_text
from ktstr_steps.messages import LABEL
from launcher import try_cli
from master import cli_records
from workers import cli_workers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=LABEL,
        description="ktstr's kernel build pipeline as a command and as CI worker phases.",
    )
    parser.add_argument(
        "--result-file", type=Path, metavar="FILE",
        help="for programs that show the output as a log (the Buildbot steps): human output "
        "on stdout, only warnings and errors on stderr, and progress events and the --json "
        "answer as JSON lines in FILE",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli_kernel.register(sub)
    cli_host.register(sub)
    cli_holder.register(sub)
    cli_trees.register(sub, default_store=_settings_tree_store)
    cli_records.register(sub)
    try_cli.register(sub)
    actions = cli_workers.register(sub)
    for action in ("start", "stop", "status"):
        make = "run" if action == "start" else action
        a = actions.add_parser(action, help=f"{action} the master and workers (make {make})")
        if action == "status":
            a.add_argument("--json", action="store_true")
        a.set_defaults(func=_service, action=action)
    return parser


def _settings_tree_store() -> Path:
    import settings

    try:
        return settings.load().paths.tree_store
    except settings.SettingsError as exc:
        raise KtstrError(f"{exc}; or pass --store DIR", kind="usage") from None


def _service(args: argparse.Namespace) -> int:
    from launcher import actions

    argv = [args.action]
    if getattr(args, "json", False):
        argv.append("--json")
    return actions.main(argv)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.result_file is not None:
        try:
            messages.use_result_file(args.result_file)
        except OSError as exc:
            print(f"{LABEL}: error: --result-file {args.result_file}: {os_error_text(exc)}",
                  file=sys.stderr)
            return 2
    try:
        return _run(args)
    finally:
        # main() also runs in-process (tests, the launcher): the next command starts clean.
        messages.reset_route()


def _run(args: argparse.Namespace) -> int:
    try:
        rc = args.func(args)
    except KtstrError as exc:
        print(f"{LABEL}: error: {exc}", file=sys.stderr)
        if getattr(args, "json", False) and not getattr(args, "json_emitted", False):
            messages.emit_json({"ok": False, "errors": [{"kind": exc.kind, "message": str(exc)}]})
        return 1
    except KeyboardInterrupt:
        print(f"{LABEL}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
