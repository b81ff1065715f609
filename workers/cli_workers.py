"""``ktstr-ci workers``: the LLC-pinned workers of this host.

``ktstr-ci workers list [--json]`` shows the workers the settings define
(name, LLC group, recorded CPUs, the CPUs the process is pinned to and why
they differ). The launcher adds ``start``/``stop``/``status`` (``make
run``/``stop``/``status``) to the same command (``launcher/cli.py``).
"""

from __future__ import annotations

import argparse
import json
import sys

from ktstr_steps.cpulist import format_cpulist
from ktstr_steps.errors import KtstrError


def register(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add ``workers list``; returns the actions of ``workers`` for the launcher's."""
    p = subparsers.add_parser("workers", help="the master and LLC-pinned workers of this host")
    sub = p.add_subparsers(dest="workers_command", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="workers of this host (one per LLC group)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)
    return sub


def _list(args: argparse.Namespace) -> int:
    from settings import SettingsError, load
    from settings.worker_specs import worker_specs

    try:
        specs = worker_specs(load())
    except (SettingsError, RuntimeError) as exc:
        raise KtstrError(str(exc), kind="settings") from None
    rows = [
        {
            "name": s.name, "host": s.host, "llc_index": s.llc_index,
            "cpus": format_cpulist(s.cpus),
            "pin_cpus": format_cpulist(s.pin_cpus) if s.pin_cpus is not None else None,
            "pin_note": s.pin_note, "basedir": str(s.basedir),
        }
        for s in specs
    ]
    if args.json:
        print(json.dumps({"workers": rows}, indent=2))
        return 0
    for r in rows:
        pin = r["pin_cpus"] if r["pin_cpus"] is not None else "(remote)"
        print(f"{r['name']}\tLLC {r['llc_index']}\tCPUs {r['cpus']}\tpinned to {pin}")
        if r["pin_note"]:
            print(f"  note: {r['pin_note']}", file=sys.stderr)
    return 0
