"""Host-resource subcommands: ``topology``, ``plan``, ``locks`` (``--watch``: a live view).

Handlers import the host modules lazily so ``ktstr-ci --help`` and unrelated
subcommands stay cheap. ``plan`` and ``locks`` have a hidden ``--lock-dir``
(tests only: where the ``ktstr-llc-*``/``ktstr-cpu-*`` files live; ktstr and
the default use /tmp).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from ktstr_steps.cli_values import int_at_least, parse_seconds
from ktstr_steps.errors import KtstrError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("topology", help="this host's CPUs, LLCs and NUMA nodes as ktstr sees them")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_topology)

    p = sub.add_parser("plan", help="dry run of the LLC plan a build would reserve now (no locks)")
    # A string, not type=int: 0, -1 and "abc" get ktstr's messages from resolve_cap.
    p.add_argument("--cpu-cap", metavar="N", default=None, help="CPUs to reserve (default 30%%)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--lock-dir", type=Path, default=Path("/tmp"), help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("locks", help="every ktstr lock file with its holders and waiters")
    p.add_argument("--json", action="store_true",
                   help="one JSON object on stdout (with --watch: one compact object per line)")
    p.add_argument("--watch", nargs="?", const="1", default=None, metavar="SECONDS",
                   help="redraw every SECONDS (default 1) until interrupted (Ctrl-C)")
    p.add_argument("--count", type=int_at_least(1), metavar="N",
                   help="with --watch: stop after N views")
    p.add_argument("--lock-dir", type=Path, default=Path("/tmp"), help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_locks)


def cmd_topology(args: argparse.Namespace) -> int:
    from ktstr_steps.topology import HostTopology

    topo = HostTopology.from_sysfs(quiet=args.json)
    if args.json:
        print(json.dumps(topo.to_json()))
    else:
        print(topo.describe())
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from ktstr_steps import planner
    from ktstr_steps.messages import say
    from ktstr_steps.planner import bypass_llc_locks
    from ktstr_steps.topology import HostTopology

    planner.refuse_cap_with_bypass(args.cpu_cap)
    if bypass_llc_locks():
        say("KTSTR_BYPASS_LLC_LOCKS is set: builds reserve nothing and run make -j$(nproc)")
        out = {"bypass": True, "llcs": None, "cpus": None, "mems": None,
               "make_jobs": None, "cross_node": False}  # fmt: skip
        print(json.dumps(out) if args.json else "bypass: no LLC plan")
        return 0
    cap = planner.resolve_cap(args.cpu_cap)
    topo = HostTopology.from_sysfs(quiet=args.json)
    plan = planner.dry_run_plan(topo, cap, lock_dir=args.lock_dir)
    warning = planner.cross_node_warning(plan, topo)
    if warning:
        print(warning, file=sys.stderr)
    if args.json:
        print(json.dumps({"bypass": False, **plan.to_json(), "cap": cap}))
    else:
        from ktstr_steps.cpulist import format_cpulist

        print(f"llcs:      {', '.join(map(str, plan.llcs))}")
        print(f"cpus:      {format_cpulist(plan.cpus)} ({len(plan.cpus)})")
        print(f"mems:      {format_cpulist(plan.mems)}")
        print(f"make -j:   {plan.make_jobs}")
        print(f"cross-node: {'yes' if plan.cross_node else 'no'}")
    return 0


_LLC_RE = re.compile(r"^ktstr-(llc|cpu)-(\d+)\.lock$")


def collect_locks(lock_dir: Path, root: Path | None) -> list[dict]:
    """Every ktstr lock file with holders (pid, mode, cmd) and waiters, one /proc/locks read."""
    from ktstr_steps import flock

    lines = flock.read_proc_locks()
    found: list[tuple[tuple, dict]] = []
    try:
        names = os.listdir(lock_dir)
    except OSError:
        names = []
    for name in names:
        m = _LLC_RE.match(name)
        if m:
            kind, index = m.group(1), int(m.group(2))
            found.append(((0 if kind == "llc" else 1, index), {"kind": kind, "index": index,
                                                               "path": lock_dir / name}))  # fmt: skip
    if root is not None:
        try:
            cache_names = os.listdir(root / ".locks")
        except OSError:
            cache_names = []
        for name in cache_names:
            if not name.endswith(".lock"):
                continue
            key = name[: -len(".lock")]
            kind = "source" if key.startswith("source-") else "cache"
            found.append(((2, key), {"kind": kind, "key": key, "path": root / ".locks" / name}))
    out = []
    for _, entry in sorted(found, key=lambda x: x[0]):
        path = entry["path"]
        entry["path"] = str(path)
        entry["holders"] = [h.to_json() for h in flock.holders(path, lines)]
        entry["waiters"] = flock.waiters(path, lines)
        out.append(entry)
    return out


def cmd_locks(args: argparse.Namespace) -> int:
    from ktstr_steps.cache import cache_root
    from ktstr_steps.messages import warn

    interval = parse_seconds(args.watch, "--watch", zero_ok=False)
    if args.count is not None and interval is None:
        raise KtstrError("--count needs --watch", kind="usage")
    try:
        root: Path | None = cache_root()
    except KtstrError as exc:
        warn(f"cache root unavailable ({exc}); listing only {args.lock_dir} locks")
        root = None
    if interval is None:
        show_locks(args, root, collect_locks(args.lock_dir, root))
        return 0
    # Live view: redrawn in place on a terminal, one block (or JSON line) per view otherwise.
    redraw = sys.stdout.isatty() and not args.json
    shown = 0
    try:
        while True:
            locks = collect_locks(args.lock_dir, root)
            if redraw:
                sys.stdout.write("\x1b[H\x1b[2J")
            if not args.json:
                print(f"{time.strftime('%H:%M:%S')}  every {interval:g}s, Ctrl-C to stop")
            show_locks(args, root, locks)
            if not args.json and not redraw:
                print()
            sys.stdout.flush()
            shown += 1
            if args.count is not None and shown >= args.count:
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0  # the way a watch ends


def show_locks(args: argparse.Namespace, root: Path | None, locks: list[dict]) -> None:
    """One view of the locks: JSON (compact under --watch) or the table."""
    if args.json:
        body = {"cache_root": str(root) if root else None, "locks": locks}
        print(json.dumps(body, separators=(",", ":") if args.watch else None))
        return
    if not locks:
        print("no ktstr lock files")
        return
    print(f"{'LOCK':<44} {'HOLDERS':<40}")
    for e in locks:
        name = f"{e['kind']} {e.get('index', e.get('key'))}"
        held = ", ".join(f"{h['pid']} {h['mode']} {h['cmd']}" for h in e["holders"]) or "-"
        waiting = f"  (waiting: {', '.join(map(str, e['waiters']))})" if e["waiters"] else ""
        print(f"{name:<44} {held}{waiting}")
        print(f"  {e['path']}")
