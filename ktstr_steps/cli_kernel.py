"""``kernel build|list|clean`` and the per-phase ``phase`` subcommands the Buildbot steps call."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ktstr_steps.cli_remote import register_install
from ktstr_steps.cli_values import int_at_least, parse_seconds
from ktstr_steps.errors import KtstrError
from ktstr_steps.messages import LABEL, emit_json, say


def register(sub: argparse._SubParsersAction) -> None:
    kernel = sub.add_parser("kernel", help="build, list and clean cached kernels (like ktstr)")
    ksub = kernel.add_subparsers(dest="kernel_command", required=True, metavar="SUBCOMMAND")

    b = ksub.add_parser(
        "build",
        help="build a kernel and store it in the cache",
        description="Build a kernel from a version (6.12.3, 6.12, A..B, latest, mainline), "
        "a local tree (--source) or a git ref (--git URL --ref REF).",
    )
    b.add_argument("version", nargs="?", metavar="VERSION")
    b.add_argument("--source", type=Path, metavar="DIR")
    b.add_argument("--git", metavar="URL")
    b.add_argument("--ref", metavar="REF")
    _config_args(b)
    b.add_argument("--clean", action="store_true", help="make mrproper first (--source only)")
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    b.add_argument("--cpu-cap", metavar="N", help="reserve exactly N CPUs (also KTSTR_CPU_CAP)")
    b.add_argument(
        "--wait",
        metavar="SECONDS",
        help="wait up to SECONDS for busy LLCs or a locked source tree (ktstr fails at once)",
    )
    b.add_argument("--mirror", metavar="URL", help="kernel tarball mirror (KTSTR_CI_KERNEL_MIRROR)")
    b.add_argument("--releases-url", metavar="URL", help="releases.json URL (KTSTR_CI_RELEASES_URL)")
    b.add_argument("--json", action="store_true", help="one JSON result object on stdout")
    b.set_defaults(func=cmd_build)

    ls = ksub.add_parser("list", help="list cached kernels")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--releases-url", metavar="URL")
    ls.add_argument(
        "--offline", action="store_true", help="do not fetch releases.json (no EOL tags)"
    )
    ls.add_argument("--range", metavar="START..END",
                    help="preview which releases a range expands to (releases.json only: "
                         "no cache read, nothing built)")
    ls.set_defaults(func=cmd_list)

    cl = ksub.add_parser("clean", help="remove cached kernels")
    cl.add_argument("--keep", type=int_at_least(0), metavar="N", help="keep the N newest valid entries")
    cl.add_argument("--corrupt-only", action="store_true", help="remove only corrupt entries")
    cl.add_argument("--force", action="store_true", help="do not ask for confirmation")
    cl.set_defaults(func=cmd_clean)

    ky = ksub.add_parser(
        "key",
        help="print the cache key a build would use, without building",
        description="--revision SHA: the key of the service's profile build of that commit "
        "(commit + profile inputs; default profile: defconfig + ktstr.kconfig, ktstr's own key). "
        "--source DIR: the key `kernel build --source DIR` would use (ktstr's rules: a "
        "leftover .config is part of it).",
    )
    ky_src = ky.add_mutually_exclusive_group(required=True)
    ky_src.add_argument("--revision", metavar="SHA", help="a full commit id")
    ky_src.add_argument("--source", type=Path, metavar="DIR", help="a local kernel tree")
    _config_args(ky)
    ky.add_argument("--kconfig", type=Path, metavar="FILE",
                    help="the ktstr.kconfig your ktstr uses (sets the kc<crc> suffix; default: "
                    "$KTSTR_CI_KTSTR_KCONFIG, else ktstr-ci's kconfig/ktstr.kconfig)")
    ky.add_argument("--json", action="store_true")
    ky.set_defaults(func=cmd_key)

    ph = sub.add_parser("phase", help="run one build phase against a state file (Buildbot steps)")
    psub = ph.add_subparsers(dest="phase", required=True, metavar="PHASE")
    lk = psub.add_parser("lookup", help="acquire the tree, compute the cache key, look it up")
    _state_arg(lk)
    lk_src = lk.add_mutually_exclusive_group(required=True)
    lk_src.add_argument("--source", type=Path, metavar="DIR")
    # A release (matrix cells): keyed without I/O; a miss fetches through the download cache.
    lk_src.add_argument("--version", metavar="V", help="an exact release, e.g. 6.12.3")
    # A pushed commit (with --profile): keyed without a tree, so a hit needs no checkout.
    lk_src.add_argument("--revision", metavar="SHA",
                        help="a full commit id; needs --profile; no tree is read")
    lk.add_argument("--tree", metavar="DIR",
                    help="with --revision: where the build's tree would be (recorded only)")
    lk.add_argument("--download-cache", type=Path, metavar="DIR", help="with --version")
    lk.add_argument("--tree-store", type=Path, metavar="DIR", help="with --version")
    lk.add_argument("--mirror", metavar="URL", help="with --version (KTSTR_CI_KERNEL_MIRROR)")
    lk.add_argument("--rc-mirror", metavar="URL", help="with --version (KTSTR_CI_RC_MIRROR)")
    # With --version, after a miss: prune the release trees and the download cache.
    lk.add_argument("--tree-max-trees", type=int_at_least(0), default=0, metavar="N")
    lk.add_argument("--tree-max-gb", type=float, default=0.0, metavar="GIB")
    lk.add_argument("--download-max-files", type=int_at_least(0), default=0, metavar="N")
    lk.add_argument("--download-max-gb", type=float, default=0.0, metavar="GIB")
    _config_args(lk)
    lk.add_argument("--clean", action="store_true")
    lk.add_argument("--force", action="store_true")
    lk.set_defaults(func=cmd_phase)
    for name, helptext in (
        ("configure", "base config + ktstr.kconfig + extra, olddefconfig"),
        ("make", "make -jN KCFLAGS=-Wno-error, streamed"),
        ("validate", "check the critical CONFIG_ options"),
        ("compile-commands", "compile_commands.json without rebuilding"),
        ("store", "dirty gate, post-build re-check, atomic cache store"),
        ("summary", "print the build result object"),
    ):
        p = psub.add_parser(name, help=helptext)
        _state_arg(p)
        if name in ("configure", "make"):
            p.add_argument("--holder", metavar="NAME", help="run inside this holder's sandbox")
        if name == "configure":
            p.add_argument("--clean", action="store_true")
        if name == "make":
            p.add_argument("--jobs", type=int_at_least(1), metavar="N")
        p.set_defaults(func=cmd_phase)
    pub = psub.add_parser(
        "publish", help="gather the built kernel's downloadable files; print what to upload")
    _state_arg(pub)
    pub.add_argument("--out", type=Path, metavar="DIR",
                     help="where the files go (default: publish/ next to the state file)")
    pub.set_defaults(func=cmd_publish)
    register_install(psub)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", metavar="NAME", help="config profile from kconfig/profiles.toml")
    p.add_argument(
        "--base-config",
        metavar="NAME|FILE",
        help="defconfig (default), tinyconfig, allnoconfig, or a config file",
    )
    p.add_argument("--extra-kconfig", type=Path, metavar="FILE", help="extra kconfig fragment")


def _state_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", type=Path, required=True, metavar="FILE")
    p.add_argument("--json", action="store_true")


def _emit(args: argparse.Namespace, obj: dict) -> None:
    if getattr(args, "json", False):
        emit_json(obj, indent=2, sort_keys=True)
        args.json_emitted = True


# -- kernel build -------------------------------------------------------------------


def cmd_build(args: argparse.Namespace) -> int:
    from ktstr_steps.build import BuildRequest, kernel_build

    given = [x for x in (args.version, args.source, args.git) if x is not None]
    if len(given) > 1:
        raise KtstrError(
            "give one of VERSION, --source DIR or --git URL --ref REF", kind="usage"
        )
    if args.ref and not args.git:
        raise KtstrError("--ref needs --git URL", kind="usage")
    if args.profile and args.base_config and args.extra_kconfig:
        pass  # explicit flags refine the profile; documented in --help
    req = BuildRequest(
        version=args.version,
        source=args.source,
        git=args.git,
        ref=args.ref,
        extra_kconfig=args.extra_kconfig,
        base_config=args.base_config,
        profile=args.profile,
        clean=args.clean,
        force=args.force,
        cpu_cap=args.cpu_cap,
        wait=parse_seconds(args.wait, "--wait", default=0.0),
        mirror=args.mirror,
        releases_url=args.releases_url,
    )
    states = kernel_build(req)
    failed = [s for s in states if not s.ok]
    for s in failed:
        for e in s.errors:
            print(f"{LABEL}: error: {e['message']}", file=sys.stderr)
    if len(states) == 1:
        _emit(args, states[0].result().to_json())
    else:
        _emit(
            args,
            {
                "ok": not failed,
                "range": args.version,
                "builds": [s.result().to_json() for s in states],
            },
        )
        if failed:
            names = ", ".join(s.version or "?" for s in failed)
            print(
                f"{LABEL}: error: kernel build range {args.version}: {len(failed)}/{len(states)} "
                f"version(s) failed: {names}",
                file=sys.stderr,
            )
    return 1 if failed else 0


# -- kernel key ---------------------------------------------------------------------


def cmd_key(args: argparse.Namespace) -> int:
    import os

    from ktstr_steps import pipeline, source
    from ktstr_steps.paths import KTSTR_KCONFIG_ENV

    if args.kconfig is not None:
        if not args.kconfig.is_file():
            raise KtstrError(f"--kconfig {args.kconfig}: no such file; give the ktstr.kconfig "
                             "your ktstr uses", kind="bad-kconfig")
        # This process only: every key rule reads the fragment from this one place.
        os.environ[KTSTR_KCONFIG_ENV] = str(args.kconfig.resolve())
    state = pipeline.init_state(
        profile=args.profile, base_config=args.base_config, extra_kconfig=args.extra_kconfig)
    if args.revision is not None:
        pipeline.revision_key(state, args.revision)
    else:
        pipeline.compute_key(state, source.acquire_local(args.source))
    out = {
        "cache_key": state.cache_key,
        "kconfig_hash": state.kconfig_hash,
        "extra_kconfig_hash": state.extra_kconfig_hash,
        "base_config": state.base_config,
        "profile": state.profile,
        "arch": state.arch,
        "git_hash": state.git_hash,
        "profile_build": state.profile_build,
    }
    if args.json:
        _emit(args, out)
    else:
        print(state.cache_key)
    return 0


# -- kernel list / clean --------------------------------------------------------------


def list_range(args: argparse.Namespace) -> int:
    """``kernel list --range A..B``: ktstr's range preview, the versions a range build builds."""
    from ktstr_steps.kernelorg import releases
    from ktstr_steps.kernelorg.versions import parse_range

    if args.offline:
        raise KtstrError("--range reads releases.json: it cannot be --offline", kind="usage")
    # Checked before any I/O, like ktstr (an inverted range never fetches).
    start, end = parse_range(args.range)
    versions = releases.expand_range(args.range, releases.fetch_releases(args.releases_url))
    if args.json:
        _emit(args, {"range": args.range, "start": start, "end": end, "versions": versions})
    else:
        sys.stdout.write("".join(f"{v}\n" for v in versions))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ktstr_steps import cache, cli_render, kconfig
    from ktstr_steps.kernelorg import releases

    if args.range is not None:
        return list_range(args)
    root = cache.cache_root()
    active: set[str] | None = None
    fetch_error: str | None = None
    if not args.offline:
        try:
            active = releases.active_prefixes(releases.fetch_releases(args.releases_url))
        except KtstrError as exc:
            fetch_error = str(exc)
    entries = cache.list_entries(root)
    current = kconfig.kconfig_hash()
    if args.json:
        _emit(args, cli_render.list_json(entries, current, active, fetch_error))
        return 0
    out, err = cli_render.render_list_text(entries, root, current, active, fetch_error)
    if err:
        sys.stderr.write(err if err.endswith("\n") else err + "\n")
    if out:
        sys.stdout.write(out if out.endswith("\n") else out + "\n")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from ktstr_steps import cache, kconfig

    # cache.clean asks on the terminal itself, and refuses without one unless --force.
    cache.clean(
        keep=args.keep,
        corrupt_only=args.corrupt_only,
        force=args.force,
        current_kconfig_hash=kconfig.kconfig_hash(),
    )
    return 0


# -- phases -----------------------------------------------------------------------


def cmd_phase(args: argparse.Namespace) -> int:
    from ktstr_steps.buildstate import BuildState

    phase = args.phase
    if phase == "lookup":
        state = BuildState()
    else:
        state = BuildState.load(args.state)
    out: dict = {}
    guard = None
    try:
        # A phase after the build joined a holder runs inside its reservation too,
        # so a holder that died in between fails it instead of letting it store.
        name = getattr(args, "holder", None) or (
            state.holder if phase not in ("lookup", "summary") else None)
        if name:
            guard = _join_holder(state, name)
        out = _run_phase(phase, state, args)
        if guard is not None and guard.lost:
            raise KtstrError(guard.lost, kind="reservation-lost")
    except KtstrError as exc:
        if guard is not None and guard.lost and exc.kind != "reservation-lost":
            # make died because the guard killed it: the lost reservation is the cause.
            guard.wait_ended()
            exc = KtstrError(guard.lost, kind="reservation-lost")
        state.fail(exc)
        out = getattr(args, "_phase_out", {})
        print(f"{LABEL}: error: {exc}", file=sys.stderr)
    finally:
        if guard is not None:
            guard.stop()
        if phase != "summary" or args.state.exists():
            state.save(args.state)
    obj = {"phase": phase, "ok": state.ok, "errors": state.errors, **out}
    if phase == "summary":
        obj = state.result().to_json()
    _emit(args, obj)
    return 0 if state.ok else 1


def cmd_publish(args: argparse.Namespace) -> int:
    """``phase publish``: reads the state, never changes it (publishing never fails a build)."""
    from ktstr_steps import bundle
    from ktstr_steps.buildstate import BuildState

    state = BuildState.load(args.state)
    out_dir = args.out or args.state.parent / bundle.DEFAULT_DIR
    # Stripping vmlinux is work of this build: inside its reservation, like the store's.
    guard = _join_holder(state, state.holder) if state.holder else None
    try:
        out = bundle.prepare(state, out_dir)
        if guard is not None and guard.lost:
            raise KtstrError(guard.lost, kind="reservation-lost")
    finally:
        if guard is not None:
            guard.stop()
    _emit(args, out)
    return 0


def _join_holder(state, name: str):
    from ktstr_steps import holder

    guard = holder.join_and_guard(name)
    plan = guard.state.get("plan") or {}
    state.holder = name
    if plan:
        state.make_jobs = plan.get("make_jobs") or state.make_jobs
        state.llcs = list(plan.get("llcs") or [])
        state.llc_cpus = list(plan.get("cpus") or [])
    return guard


def _missing_json(m) -> dict:
    return {"option": getattr(m, "option", str(m)), "hint": getattr(m, "hint", "")}


def _run_phase(phase: str, state, args: argparse.Namespace) -> dict:
    from ktstr_steps import pipeline, source
    from ktstr_steps.buildstate import timed

    if phase == "lookup":
        new = pipeline.init_state(
            profile=args.profile, base_config=args.base_config, extra_kconfig=args.extra_kconfig
        )
        state.__dict__.update(new.__dict__)
        if args.version is not None:
            from ktstr_steps.release_tree import lookup_version

            return lookup_version(
                state, args.version, download_cache=args.download_cache,
                tree_store=args.tree_store, mirror=args.mirror, rc_mirror=args.rc_mirror,
                force=args.force, tree_limits=(args.tree_max_trees, args.tree_max_gb),
                download_limits=(args.download_max_files, args.download_max_gb),
            )  # fmt: skip
        with timed(state, "lookup"):
            if args.revision is not None:
                if not args.profile:
                    raise KtstrError("--revision needs --profile: only a profile build is "
                                     "keyed by its commit alone", kind="usage")
                pipeline.revision_key(state, args.revision, tree=args.tree)
            else:
                src = source.acquire_local(args.source)
                pipeline.apply_source(state, src)
                pipeline.compute_key(state, src, clean=args.clean,
                                     profile_build=args.profile is not None)
            say(f"cache key: {state.cache_key}")
            entry = None if args.force else pipeline.lookup_cached(state)
        if entry is not None:
            pipeline.mark_hit(state, entry)
        else:
            from ktstr_steps.explain import explain_miss

            state.explanation = explain_miss(state, force=args.force)
        return {
            "cache_key": state.cache_key,
            "explanation": state.explanation,
            "hit": entry is not None,
            "entry_dir": state.entry_dir,
            "dirty": state.is_dirty,
            "is_git": state.is_git,
            "git_hash": state.git_hash,
            "diff_hash": state.diff_hash,
            "outcome": state.outcome,
        }
    if phase == "configure":
        changed = pipeline.phase_configure(state, clean=args.clean)
        return {"configured": changed, "skipped": state.configure_skipped,
                "overrides": state.overrides, "dropped": state.dropped}
    if phase == "make":
        try:
            pipeline.phase_make(state, jobs=args.jobs)
        finally:
            make_out = {
                "jobs": state.make_jobs,
                "warnings": state.make_warnings,
                "errors_count": state.make_errors,
                "failed_target": state.failed_target,
                "log_path": state.make_log,
                "seconds": state.phases.get("make"),
            }
            args._phase_out = make_out
        return make_out
    if phase == "validate":
        from ktstr_steps import kconfig

        missing = kconfig.validate_kernel_config(Path(state.source_dir))
        args._phase_out = {"missing": [_missing_json(m) for m in missing]}
        pipeline.phase_validate(state)
        return args._phase_out
    if phase == "compile-commands":
        path = pipeline.phase_compile_commands(state)
        return {"path": str(path) if path else None}
    if phase == "store":
        pipeline.phase_store(state)
        return {
            "outcome": state.outcome,
            "cache_key": state.cache_key,
            "entry_dir": state.entry_dir,
            "image_path": state.image_path,
            "config_hash": state.config_hash,
        }
    if phase == "summary":
        return {}
    raise KtstrError(f"unknown phase {phase!r}", kind="usage")
