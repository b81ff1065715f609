"""Tiny launcher: set this process's CPU affinity, then exec a command.

``python -m workers.launch --cpus 0-1 -- buildbot-worker start --quiet DIR``

The worker (and every build process it forks: make, gcc, the holder) then
inherits the LLC group's CPUs. ``exec`` keeps no launcher process around and
passes the argv list unchanged: no shell is involved.
"""

from __future__ import annotations

import argparse
import os
import sys

from ktstr_steps.util import parse_cpulist


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.launch")
    parser.add_argument("--cpus", help="CPU list to pin to (0-3,8); omit to not pin")
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
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        print(f"ktstr-ci: error: cannot run {cmd[0]}: {exc}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
