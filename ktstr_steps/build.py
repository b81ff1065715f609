"""``kernel build`` in one process: acquire, look up, reserve, lock, build, store (ktstr's order).

Teardown order on every path, as in ktstr: source-tree lock, then the cgroup
sandbox, then the LLC flocks (the reservation releases its sandbox first),
then the temporary source directory.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ktstr_steps import cache, pipeline, source
from ktstr_steps.buildstate import BuildState, timed
from ktstr_steps.errors import KtstrError
from ktstr_steps.kernelorg.releases import resolve_version
from ktstr_steps.messages import say
from ktstr_steps.planner import bypass_llc_locks
from ktstr_steps.results import Outcome


@dataclass
class BuildRequest:
    version: str | None = None
    source: Path | None = None
    git: str | None = None
    ref: str | None = None
    extra_kconfig: Path | None = None
    base_config: str | None = None
    profile: str | None = None
    clean: bool = False
    force: bool = False
    cpu_cap: str | int | None = None
    wait: float = 0.0
    mirror: str | None = None
    releases_url: str | None = None


def resolve_versions(req: BuildRequest) -> list[str | None]:
    """The versions this request builds: [None] for --source/--git, else resolved."""
    if req.source is not None or req.git is not None:
        return [None]
    spec = None if req.version in (None, "latest-stable") else req.version
    versions = resolve_version(spec, releases_url_flag=req.releases_url, mirror=req.mirror)
    return list(versions)


def kernel_build(req: BuildRequest) -> list[BuildState]:
    """Build every version of the request (one unless VERSION is a range)."""
    from ktstr_steps import planner

    planner.refuse_cap_with_bypass(req.cpu_cap)
    if req.git is not None and not req.ref:
        raise KtstrError("--git needs --ref REF (a branch, tag or commit)", kind="usage")
    # (--clean on a downloaded source is noted by the clean phase, once; a hit says nothing.)
    versions = resolve_versions(req)
    if len(versions) == 1:
        return [build_one(req, versions[0])]
    states: list[BuildState] = []
    for i, v in enumerate(versions, 1):
        say(f"[{i}/{len(versions)}] kernel build {v}")
        st = build_one(req, v)
        if not st.ok:
            say(f"{v}: {st.errors[-1]['message'] if st.errors else 'failed'}")
        states.append(st)
    return states


def build_one(req: BuildRequest, version: str | None) -> BuildState:
    from ktstr_steps import planner

    state = BuildState()
    tmp: Path | None = None
    reservation = None
    tree_lock = None
    try:
        state = pipeline.init_state(
            profile=req.profile, base_config=req.base_config, extra_kconfig=req.extra_kconfig
        )
        cap = planner.resolve_cap(req.cpu_cap)
        root = cache.cache_root()
        # -- acquire the source --
        with timed(state, "acquire"):
            if req.source is not None:
                src = source.acquire_local(req.source)
            elif req.git is not None:
                tmp = Path(tempfile.mkdtemp(prefix="ktstr-ci-src-"))
                src = source.acquire_git(req.git, req.ref, tmp)
            else:
                assert version is not None
                if not req.force:
                    # Tarball keys are known before download: a hit never downloads.
                    probe = source.AcquiredSource(
                        src_dir=Path("."), kind="tarball", version=version
                    )
                    pipeline.apply_source(state, probe)
                    pipeline.compute_key(state, probe)
                    with timed(state, "lookup"):
                        entry = pipeline.lookup_cached(state)
                    if entry is not None:
                        pipeline.mark_hit(state, entry)
                        return state
                tmp = Path(tempfile.mkdtemp(prefix="ktstr-ci-src-"))
                src = source.acquire_tarball(version, tmp, mirror=req.mirror)
        pipeline.apply_source(state, src)
        pipeline.compute_key(state, src, clean=req.clean)
        # -- cache check, or with --force a probe that nobody uses the entry --
        if not req.force:
            with timed(state, "lookup"):
                entry = pipeline.lookup_cached(state)
            if entry is not None:
                pipeline.mark_hit(state, entry)
                return state
        else:
            cache.force_probe(state.cache_key)
        from ktstr_steps.explain import explain_miss

        state.explanation = explain_miss(state, force=req.force)
        # -- reservation: LLC flocks and the sandbox --
        from ktstr_steps.reservation import acquire_build_reservation

        with timed(state, "reserve"):
            reservation = acquire_build_reservation(cap, wait=req.wait)
        if reservation.plan is not None:
            state.llcs = list(reservation.plan.llcs)
            state.llc_cpus = list(reservation.plan.cpus)
        state.make_jobs = reservation.make_jobs
        # -- source-tree lock, held to the end of the build --
        if state.kind == "local" and not bypass_llc_locks():
            from ktstr_steps.tree_lock import acquire_source_tree_lock

            with timed(state, "source_lock"):
                tree_lock = acquire_source_tree_lock(
                    Path(state.canonical_path or state.source_dir),
                    root,
                    wait=req.wait or None,
                )
            if tree_lock.waited and not req.force and recheck_after_wait(state, req):
                return state
        pipeline.run_kernel_phases(state, clean=req.clean)
    except KtstrError as exc:
        state.fail(exc)
    except Exception as exc:  # a bug: still one JSON object, with the traceback on stderr
        import traceback

        traceback.print_exc()
        state.fail(KtstrError(f"internal error: {exc!r}", kind="internal"))
    finally:
        if tree_lock is not None:
            tree_lock.release()
        if reservation is not None:
            reservation.release()
        pipeline.remove_tree(tmp)
        if tmp is not None and state.outcome != Outcome.CACHED and state.is_temp:
            # The source-tree image went with the temp dir.
            if state.image_path and state.image_path.startswith(str(tmp)):
                state.image_path = None
    return state


def recheck_after_wait(state: BuildState, req: BuildRequest) -> bool:
    """After waiting on a peer: if the tree is unchanged and the peer filled our key, skip."""
    src = source.acquire_local(Path(state.source_dir))
    pipeline.apply_source(state, src)
    pipeline.compute_key(state, src, clean=req.clean)
    entry = pipeline.lookup_cached(state)
    if entry is None:
        return False
    say(
        f"concurrent ktstr build populated cache slot {state.cache_key} during peer's build "
        "wait — skipping redundant rebuild"
    )
    pipeline.mark_hit(state, entry)
    return True
