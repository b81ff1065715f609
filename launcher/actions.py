"""``python -m launcher start|stop|status``: what ``make run``, ``make stop`` and
``make status`` run.

``start`` first creates ``var/settings.toml`` (an override file with only
comments) when no settings file is chosen, then sets up and starts the
service (:class:`~launcher.service.Service`) and prints the banner.
``--workers-only`` is for a worker host of a ``workers.mode = "list"``
master: only this host's listed workers start or stop, no master.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import settings
from launcher import report
from launcher.service import Service, ServiceError

_SETTINGS_STUB = """\
# ktstr-ci settings for this checkout: only the keys you change.
# Every key and its default is in settings/default.toml; copy the
# lines you want to change here. `make stop; make run` applies them.
"""


def ensure_local_settings(root: Path = settings.REPO_ROOT) -> None:
    """Create ``var/settings.toml`` (an override file with only comments) for `make run`."""
    if os.environ.get(settings.ENV_VAR):
        return
    path = root / "var" / "settings.toml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_SETTINGS_STUB)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launcher",
        description="Start, stop or show the ktstr-ci master and its LLC-pinned workers.",
    )
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--json", action="store_true", help="status as JSON")
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument(
        "--workers-only", action="store_true",
        help="a worker host: start/stop only this host's workers of workers.list (no master)",
    )
    args = parser.parse_args(argv)
    if shutil.which("git") is None:
        print("ktstr-ci: error: git is not installed (make deps installs it)", file=sys.stderr)
        return 1
    try:
        if args.action == "start" and not args.workers_only:
            ensure_local_settings()
        svc = Service(settings.load())
        if args.action == "start" and args.workers_only:
            svc.start_workers(timeout=args.timeout)
            print("ktstr-ci: workers connected to "
                  f"{svc.settings.master.pb_bind}:{svc.settings.master.pb_port}: "
                  + ", ".join(sp.name for sp in svc.local_specs))
        elif args.action == "start":
            svc.start(timeout=args.timeout)
            print(report.banner(svc))
        elif args.action == "stop":
            stopped = svc.stop(workers_only=args.workers_only)
            print("ktstr-ci: stopped " + (", ".join(stopped) if stopped else "nothing (not running)"))
        elif args.json:
            print(json.dumps(report.status(svc), indent=2))
        else:
            print("\n".join(report.status_lines(report.status(svc))))
    except (settings.SettingsError, ServiceError, RuntimeError) as exc:
        print(f"ktstr-ci: error: {exc}", file=sys.stderr)
        return 1
    return 0
