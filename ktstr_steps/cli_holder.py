"""``ktstr-ci holder ...``: the reservation holder that outlives one command (docs/contracts.md).

Subcommands: ``acquire``, ``lock-source``, ``run``, ``status``, ``list``,
``release``. The work lives in :mod:`ktstr_steps.holder`; handlers import it
lazily so ``ktstr-ci --help`` stays cheap. ``acquire`` has a hidden
``--lock-dir`` (tests only: where the ``ktstr-llc-*`` files live).
"""

from __future__ import annotations

import argparse

from ktstr_steps.cli_values import parse_seconds
from ktstr_steps.errors import KtstrError
from ktstr_steps.messages import LABEL, emit_json


def _emit(args: argparse.Namespace, obj: dict, human: str) -> None:
    if getattr(args, "json", False):
        emit_json(obj)
        args.json_emitted = True
    else:
        print(human)


def _cap(text: str) -> int:
    # Parsed here (not type=int) so `--cpu-cap abc` gets ktstr-ci's clear message.
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cpu-cap is not a valid integer: {text!r}") from None


def _acquire(args: argparse.Namespace) -> int:
    from ktstr_steps import holder, planner

    planner.refuse_cap_with_bypass(args.cpu_cap)
    cap = planner.resolve_cap(args.cpu_cap)
    wait = parse_seconds(args.wait, "--wait", default=0.0)
    lifetime = parse_seconds(args.max_lifetime, "--max-lifetime", zero_ok=False)
    st = holder.acquire(
        args.name, cap=cap, wait=wait, owner_pid=args.owner_pid,
        max_lifetime=lifetime, lock_dir=args.lock_dir, master_link=args.master_link,
    )
    plan = st.get("plan")
    human = (
        f"holder {st['name']} pid {st['pid']}: bypass (no reservation)" if st.get("bypass")
        else f"holder {st['name']} pid {st['pid']}: LLCs {plan['llcs']} CPUs {plan['cpus']} "
        f"make -j{plan['make_jobs']} sandbox {st['sandbox']['kind']}" if plan
        else f"holder {st['name']} pid {st['pid']}: no reservation (sysfs unreadable)"
    )
    _emit(args, st, human)
    return 0


def _lock_source(args: argparse.Namespace) -> int:
    from ktstr_steps import holder

    out = holder.lock_source(args.name, args.source, wait=parse_seconds(args.wait, "--wait"))
    _emit(args, out, f"holder {out['name']} holds {out['lockfile']}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from ktstr_steps import holder

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    return holder.run(args.name, cmd)


def _status(args: argparse.Namespace) -> int:
    from ktstr_steps import holder

    st = holder.status(args.name)
    _emit(args, st, f"holder {st['name']} pid {st['pid']} alive={st['alive']}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from ktstr_steps import holder

    hs = holder.list_holders()
    _emit(args, {"holders": hs},
          "\n".join(f"{h['name']} pid {h['pid']} alive={h['alive']}" for h in hs) or "no holders")
    return 0


def _release(args: argparse.Namespace) -> int:
    from ktstr_steps import holder

    out = holder.release(args.name)
    _emit(args, out, f"holder {out['name']}: released {', '.join(out['released']) or 'nothing'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("holder", help="a worker-side holder that keeps a build's reservation")
    hs = p.add_subparsers(dest="holder_command", required=True, metavar="ACTION")

    def named(name: str, help_: str, func) -> argparse.ArgumentParser:
        q = hs.add_parser(name, help=help_)
        q.add_argument("--name", required=True, help="holder name, [A-Za-z0-9_.-]{1,100}")
        q.add_argument("--json", action="store_true", help="one JSON object on stdout")
        q.set_defaults(func=func)
        return q

    q = named("acquire", "start a holder that reserves LLCs + sandbox for a build", _acquire)
    q.add_argument("--cpu-cap", type=_cap, default=None, metavar="N")
    # Seconds are parsed by the handlers (parse_seconds): one-line errors, exit 1.
    q.add_argument("--wait", metavar="SECONDS",
                   help="wait up to SECONDS for busy LLCs instead of failing at once")
    q.add_argument("--owner-pid", type=int, default=None, metavar="PID",
                   help="release when this process exits (default: the parent of this command)")
    q.add_argument("--max-lifetime", metavar="SECONDS",
                   help="release after SECONDS no matter what")
    q.add_argument("--lock-dir", default=None, help=argparse.SUPPRESS)
    q.add_argument("--master-link", default=None, metavar="HOST:PORT",
                   help="the worker-side address of the owner's connection to the master; "
                        "release as soon as that connection closes")

    q = named("lock-source", "have the holder take the source-tree lock of DIR", _lock_source)
    q.add_argument("--source", required=True, metavar="DIR")
    q.add_argument("--wait", metavar="SECONDS",
                   help="give up after SECONDS (default: wait as long as it takes, like ktstr)")

    q = hs.add_parser("run", help="run CMD inside the holder's cgroup and CPU affinity")
    q.add_argument("--name", required=True)
    q.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    q.set_defaults(func=_run)

    named("status", "show a holder's state", _status)
    named("release", "release source lock, sandbox, LLC locks (that order)", _release)
    q = hs.add_parser("list", help="all holders under the run directory")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_list)


__all__ = ["register", "KtstrError", "LABEL"]
