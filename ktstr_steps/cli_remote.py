"""``phase install``: put an entry fetched from the master into this host's kernel cache.

The remote-lookup step transfers a published entry's files from the master
into a staging directory on the worker, then runs this command with the
checksums the master recorded at publish time. A verified entry becomes the
build's kernel (outcome ``remote-hit``); a refused one leaves the cache and
the build state as they were, prints one warning line, and the build goes on
as a miss. The staging directory is removed either way.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ktstr_steps.errors import KtstrError
from ktstr_steps.messages import emit_json, say, warn
from ktstr_steps.results import Outcome


def register_install(psub: argparse._SubParsersAction) -> None:
    """The ``phase install`` parser, among the other phases."""
    p = psub.add_parser(
        "install", help="verify an entry fetched from the master and install it in the cache")
    p.add_argument("--state", type=Path, required=True, metavar="FILE",
                   help="the build state of the lookup that missed (its key is installed)")
    p.add_argument("--key", required=True, metavar="KEY",
                   help="the cache key the entry was published under (must be the state's)")
    p.add_argument("--dir", type=Path, required=True, metavar="DIR",
                   help="the fetched files (removed afterwards)")
    p.add_argument("--expect", action="append", default=[], metavar="NAME=SHA256:SIZE",
                   help="a file the master recorded at publish time; repeat for each file")
    p.add_argument("--origin", metavar="TEXT", help="where the entry came from (recorded)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_install)


def cmd_install(args: argparse.Namespace) -> int:
    from ktstr_steps.buildstate import BuildState
    from ktstr_steps.cache import remote

    out: dict = {"phase": "install", "ok": True, "installed": False}
    try:
        state = BuildState.load(args.state)
        if not state.cache_key:
            raise KtstrError(f"build state {args.state} has no cache key: run lookup first",
                             kind="bad-state")
        out["cache_key"] = state.cache_key
        if state.cache_key != args.key:
            raise KtstrError(f"the build state's cache key is {state.cache_key}, not {args.key}: "
                             "the entry belongs to another build", kind="bad-state")
        expected = remote.parse_expect(args.expect)
        entry = remote.install(state.cache_key, args.dir, expected, origin=args.origin)
    except remote.RemoteEntryRefused as exc:
        warn(f"{exc}; building it here")
        out.update(refused=str(exc), file=exc.file, expected=exc.expected, got=exc.got)
    except KtstrError as exc:
        # The local build still works without the remote copy: never a failed build.
        warn(f"remote cache entry not installed: {exc}; building it here")
        out["refused"] = str(exc)
    else:
        state.outcome = Outcome.REMOTE_HIT
        state.entry_dir = str(entry.path)
        state.image_path = str(entry.image_path)
        state.config_hash = entry.metadata.config_hash
        state.save(args.state)
        say(f"remote kernel installed: {entry.path}")
        out.update(installed=True, outcome=state.outcome, entry_dir=state.entry_dir,
                   image_path=state.image_path, config_hash=state.config_hash)
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    if args.json:
        emit_json(out, indent=2, sort_keys=True)
        args.json_emitted = True
    return 0
