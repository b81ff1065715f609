"""``ktstr-ci trees``: the host's tree store — list, prune, and ``prepare`` (the checkout step's).

``ktstr-ci trees [--store DIR] [--downloads DIR] [--json]`` lists every tree
(builder, branch, commit, size, last built, locked) and the recent removals;
with ``--downloads``, the download cache's tarballs and removals too. ``trees prune``
applies the limits now. ``trees prepare`` is what the checkout step runs
before git: mirror fetch, seeding of a new branch's tree, pruning.

The store defaults to the one the caller registers (the launcher: the
settings' ``[paths] tree_store``), so the pipeline itself reads no settings.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ktstr_steps.cli_values import int_at_least
from ktstr_steps.errors import KtstrError

StoreDefault = Callable[[], Path]


def _gb(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of GiB") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 (no limit) or more")
    return value


def _limit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-trees", type=int_at_least(0), default=0, metavar="N",
                   help="keep at most N trees per builder (0: no limit)")
    p.add_argument("--max-gb", type=_gb, default=0.0, metavar="GIB",
                   help="keep all trees together under GIB GiB (0: no limit)")


def register(sub: argparse._SubParsersAction, default_store: StoreDefault | None = None) -> None:
    t = sub.add_parser("trees", help="the per-branch kernel trees of this host (list, prune)")
    t.add_argument("--store", type=Path, metavar="DIR", help="the tree store (default: settings)")
    t.add_argument("--json", action="store_true", help="one JSON object on stdout")
    t.add_argument("--no-sizes", action="store_true", help="do not measure tree sizes (faster)")
    t.add_argument("--downloads", type=Path, metavar="DIR",
                   help="also list this download cache of release tarballs")
    t.set_defaults(func=cmd_list, default_store=default_store)
    tsub = t.add_subparsers(dest="trees_command", metavar="SUBCOMMAND")

    p = tsub.add_parser("prepare", help="(checkout step) fetch into the mirror, seed or stamp "
                        "the tree, prune the store")
    p.add_argument("--tree", type=Path, required=True, metavar="DIR",
                   help="<tree store>/<builder>/<branch dir>")
    p.add_argument("--repourl", required=True, metavar="URL")
    p.add_argument("--branch", metavar="BRANCH")
    p.add_argument("--revision", metavar="SHA", help="the commit the build checks out")
    p.add_argument("--checkout", action="store_true",
                   help="also check the commit out in the tree (the branch's head without "
                   "--revision)")
    _limit_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_prepare)

    r = tsub.add_parser("prune", help="remove least recently built trees over the limits")
    r.add_argument("--store", type=Path, metavar="DIR", help="the tree store (default: settings)")
    _limit_args(r)
    r.add_argument("--json", action="store_true", help="one JSON object on stdout")
    r.set_defaults(func=cmd_prune, default_store=default_store)


def _store(args: argparse.Namespace) -> Path:
    if args.store is not None:
        return args.store.resolve()
    if args.default_store is None:
        raise KtstrError("no tree store: pass --store DIR", kind="usage")
    return Path(args.default_store()).resolve()


def _cache_root() -> Path:
    from ktstr_steps import cache

    return cache.cache_root()


def cmd_prepare(args: argparse.Namespace) -> int:
    from ktstr_steps.treestore.prepare import prepare_tree
    from ktstr_steps.treestore.prune import Limits

    out = prepare_tree(args.tree, repourl=args.repourl, branch=args.branch or None,
                       revision=args.revision or None, cache_root=_cache_root(),
                       limits=Limits(args.max_trees, args.max_gb), checkout=args.checkout)
    print(json.dumps(out) if args.json else out["action"])
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from ktstr_steps.treestore.prune import Limits, prune_store

    if args.max_trees == 0 and args.max_gb == 0:
        raise KtstrError("trees prune needs --max-trees N and/or --max-gb GIB", kind="usage")
    removed = prune_store(_store(args), Limits(args.max_trees, args.max_gb), _cache_root())
    print(json.dumps({"removed": removed}) if args.json else f"removed {len(removed)} tree(s)")
    return 0


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n}B"


def render(trees: list[dict[str, Any]], removed: list[dict[str, Any]]) -> str:
    """The text table of ``ktstr-ci trees``."""
    rows = [("BUILDER", "BRANCH", "COMMIT", "SIZE", "LAST BUILT", "LOCKED")]
    for t in trees:
        rows.append((t["builder"], t["branch"] or Path(t["path"]).name,
                     (t["commit"] or "-")[:12], _size(t["size"]), t["last_built_text"],
                     "yes" if t["locked"] else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
             for r in rows]
    if len(rows) == 1:
        lines.append("(no trees)")
    if removed:
        lines.append("")
        lines.append("recently removed:")
        for r in removed[-10:]:
            lines.append(f"  {r.get('builder')}/{r.get('branch') or Path(r['path']).name}: "
                         f"{r.get('reason')}")
    return "\n".join(line.rstrip() for line in lines)


def cmd_list(args: argparse.Namespace) -> int:
    from ktstr_steps.treestore import inventory

    store = _store(args)
    trees = [t.to_json() for t in inventory.store_trees(store, cache_root=_cache_root(),
                                                         sizes=not args.no_sizes)]
    removed = inventory.removals(store)
    out: dict[str, Any] = {"store": str(store), "trees": trees, "removed": removed}
    if args.downloads is not None:
        from ktstr_steps.kernelorg import download_limits

        out["downloads"] = {
            "dir": str(args.downloads),
            "tarballs": [t.to_json() for t in download_limits.tarballs(args.downloads)],
            "removed": download_limits.removals(args.downloads),
        }
    if args.json:
        print(json.dumps(out))
        return 0
    print(render(trees, removed))
    if "downloads" in out:
        dl = out["downloads"]
        print(f"\ndownload cache {dl['dir']}:")
        for t in dl["tarballs"] or [{"name": "(no tarballs)", "size": None, "locked": False}]:
            print(f"  {t['name']}  {_size(t['size'])}{'  locked' if t['locked'] else ''}")
        for r in dl["removed"][-10:]:
            print(f"  removed {r.get('name')}: {r.get('reason')}")
    return 0
