"""Tiny launcher: set this process's CPU affinity, then exec a command.

``python -m workers.launch --cpus 0-1 [--pidfile F] [--starts-file S] -- buildbot-worker start --nodaemon DIR``

The worker (and every build process it forks: make, gcc, the holder) then
inherits the LLC group's CPUs. ``exec`` keeps no launcher process around and
passes the argv list unchanged: no shell is involved. The pid stays the same
across the exec, so ``--pidfile`` holds the worker's own pid (with
``--nodaemon`` twistd writes none), and ``--starts-file`` gets one line per
start (time, pid): the supervisor's restart count (``workers/supervise.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ktstr_steps.cpulist import parse_cpulist


def record_start(starts_file: Path) -> None:
    """Append this start (time and pid) to ``starts_file``."""
    starts_file.parent.mkdir(parents=True, exist_ok=True)
    with open(starts_file, "a") as f:
        f.write(f"{time.time():.3f} {os.getpid()}\n")


def write_pidfile(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.launch")
    parser.add_argument("--cpus", help="CPU list to pin to (0-3,8); omit to not pin")
    parser.add_argument("--pidfile", type=Path, help="write this process's pid here")
    parser.add_argument("--starts-file", type=Path, help="append one line per start here")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        parser.error("no command given after --")
    if args.cpus:
        try:
            cpus = parse_cpulist(args.cpus)
        except ValueError as exc:
            parser.error(f"--cpus: {exc}")
        try:
            os.sched_setaffinity(0, cpus)
        except OSError as exc:
            print(f"ktstr-ci: error: cannot pin to CPUs {args.cpus}: {exc}", file=sys.stderr)
            return 1
    try:
        if args.pidfile:
            write_pidfile(args.pidfile)
        if args.starts_file:
            record_start(args.starts_file)
    except OSError as exc:
        print(f"ktstr-ci: error: {exc}", file=sys.stderr)
        return 1
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        print(f"ktstr-ci: error: cannot run {cmd[0]}: {exc}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
