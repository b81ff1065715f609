"""ktstr's kernel build pipeline, phase by phase: identity, lookup, configure, make, validate, store.

Each phase function mutates a :class:`~ktstr_steps.buildstate.BuildState` and
records its duration; errors are :class:`KtstrError` and leave the outcome
``failed``.

Deliberate changes from ktstr, each fixing one of its defects:

- A cfg-keyed lookup miss falls back to the entry built from the same commit
  without a ``.config`` when that entry's final ``config_hash`` equals the
  tree's current ``.config``: ktstr rebuilds the kernel it just built.
- ``--clean`` on a local tree keys the build as if ``.config`` were absent,
  since ``mrproper`` deletes it before configure.
- The configure probe counts only semantic lines (in kconfig.py).
- compile_commands.json is generated from the ``.cmd`` files, so it never
  rebuilds the tree (kbuild.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
from pathlib import Path

from ktstr_steps import (
    build_facts,
    cache,
    configstamp,
    identity,
    kbuild,
    kconfig,
    keys,
    make_estimate,
    make_warnings,
)
from ktstr_steps.buildstate import BuildState, timed
from ktstr_steps.errors import KtstrError
from ktstr_steps.keys import crc32_hex
from ktstr_steps.messages import LABEL, human_line, say, warn
from ktstr_steps.results import Outcome, error_json

DIRTY_TREE_CACHE_SKIP_HINT = (
    "skipping cache — working tree has uncommitted changes; commit or stash to enable caching"
)
NON_GIT_TREE_CACHE_SKIP_HINT = (
    "skipping cache — source tree is not a git repository so dirty state cannot be "
    "detected; put the source under git, or replace `--source` with "
    f"`{LABEL} kernel build VERSION` (a released kernel) or "
    f"`{LABEL} kernel build --git URL --ref REF` (a git tree) — to enable caching"
)


# -- identity ----------------------------------------------------------------


def resolve_config_inputs(
    *,
    profile: str | None,
    base_config: str | None,
    extra_kconfig: Path | None,
) -> tuple[str, str | None]:
    """(base config, extra fragment text) from a profile and/or explicit flags.

    A profile's fragments come first and an explicit ``--extra-kconfig`` after
    them, so the command line wins over the profile as the user expects.
    """
    base = "defconfig"
    parts: list[str] = []
    if profile:
        prof = kconfig.load_profile(profile)
        base = prof.base
        if prof.extra_text:
            parts.append(prof.extra_text)
    if base_config:
        base = base_config
    base = kconfig.check_base_config(base)
    if extra_kconfig is not None:
        parts.append(kconfig.load_extra_kconfig(extra_kconfig))
    return base, ("\n".join(parts) if parts else None)


def apply_source(state: BuildState, src) -> None:
    """Copy an acquired source's facts into the state (src: source.AcquiredSource)."""
    state.source_dir = str(src.src_dir)
    state.kind = src.kind
    state.version = src.version
    state.ref = src.ref
    state.git_hash = src.git_hash
    state.canonical_path = str(src.canonical_path) if src.canonical_path else None
    state.is_temp = src.is_temp
    state.is_dirty = src.is_dirty
    state.is_git = src.is_git
    state.config_crc = src.config_crc
    state.source_meta = src.source_meta()
    dirty_git = src.kind == "local" and src.is_git and src.is_dirty
    state.diff_hash = tree_diff_hash(Path(src.src_dir)) if dirty_git else None


# Fixed diff options so a user's git config (prefixes, renames, colour, external diff
# drivers) cannot change the bytes, hence the hash, of the same change.
_DIFF_ARGS = [
    "-c", "core.fsmonitor=false", "-c", "core.quotePath=true",
    "diff", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", "--binary",
    "--full-index", "--ignore-submodules=all", "--src-prefix=a/", "--dst-prefix=b/", "HEAD",
]  # fmt: skip


def tree_diff_hash(tree: Path) -> str | None:
    """sha256 (hex) of ``git diff HEAD`` of ``tree``: staged and unstaged changes of tracked
    files, untracked files ignored like the dirty check. None (with a warning) if git fails:
    the hash only labels a dirty build, it must never fail one."""
    from ktstr_steps import source

    try:
        # Raw bytes, not text: a patch may hold any encoding and the hash is of what git wrote.
        proc = subprocess.run(
            ["git", *_DIFF_ARGS], cwd=tree, env=source._git_env(), capture_output=True,
            stdin=subprocess.DEVNULL, timeout=600, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        warn(f"cannot hash the uncommitted changes of {tree}: {exc}")
        return None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        warn(f"cannot hash the uncommitted changes of {tree}: git diff: {err[-1] if err else proc.returncode}")
        return None
    return hashlib.sha256(proc.stdout).hexdigest()


def key_suffix(state: BuildState) -> str:
    """``kc{S}[-xkc{X}][base suffix]``: the profile's inputs as the key carries them."""
    state.kconfig_hash = kconfig.kconfig_hash()
    state.extra_kconfig_hash = kconfig.extra_kconfig_hash(state.extra_kconfig)
    return keys.kconfig_suffix(state.kconfig_hash, state.extra_kconfig_hash) + keys.base_suffix(
        state.base_config
    )


def compute_key(state: BuildState, src, *, clean: bool = False,
                profile_build: bool = False) -> str:
    """The cache key of this build (ktstr's formats + our base-config suffix).

    ``profile_build``: the build configures from its profile alone, so a clean
    git tree is keyed by commit and profile (``keys.profile_key``) and its
    leftover ``.config`` is no input; otherwise ktstr's cfg-keyed rules hold.
    """
    suffix = key_suffix(state)
    state.profile_build = profile_build
    if profile_build and src.kind == "local" and src.cacheable and src.git_hash:
        state.config_crc = None
        state.cache_key = keys.profile_key(src.git_hash, src.arch.arch, suffix)
    else:
        if clean and src.kind == "local":
            # mrproper will delete .config before configure: key what will be built.
            src = dataclasses.replace(src, config_crc=None)
            state.config_crc = None
        state.cache_key = src.cache_key(suffix)
    state.identity = identity.build_identity(state, kbuild.make_vars(state.arch))
    return state.cache_key


def revision_key(state: BuildState, revision: str, *, tree: str | None = None) -> str:
    """Key a profile build by the commit alone, before any tree exists (no checkout).

    The state then describes a clean git tree at that commit, so a hit can be
    published and recorded like one found after a checkout; ``tree`` is where
    that tree would be, for the record only.
    """
    hash7 = keys.revision_hash7(revision)
    state.kind = "local"
    state.git_hash = hash7
    state.is_git = True
    state.is_dirty = False
    state.config_crc = None
    state.profile_build = True
    state.source_meta = {"type": "local", "source_tree_path": tree, "git_hash": hash7}
    state.cache_key = keys.profile_key(hash7, state.arch, key_suffix(state))
    return state.cache_key


def lookup_cached(state: BuildState) -> cache.CacheEntry | None:
    """Cache lookup for the state's key; a cfg-keyed local tree falls back to the entry built
    from the same commit without a ``.config`` when its final config is the tree's."""
    if state.is_dirty:
        return None
    entry = cache.lookup(state.cache_key)
    if entry is None and state.kind == "local" and state.config_crc and state.git_hash:
        plain = state.cache_key.replace(f"-cfg{state.config_crc}-", "-", 1)
        cand = cache.lookup(plain) if plain != state.cache_key else None
        if cand is not None and cand.metadata.config_hash == state.config_crc:
            entry = cand
    return entry


def mark_hit(state: BuildState, entry: cache.CacheEntry) -> None:
    state.outcome = Outcome.CACHE_HIT
    state.entry_dir = str(entry.path)
    state.image_path = str(entry.image_path)
    state.config_hash = entry.metadata.config_hash
    say(f"cached kernel found: {entry.path}")
    say("use --force to rebuild")


# -- phases after acquisition --------------------------------------------------


def phase_clean(state: BuildState, *, clean: bool) -> None:
    if not clean:
        return
    if state.kind != "local":
        say("--clean is only meaningful with --source (downloaded sources start clean)")
        return
    say("make mrproper")
    kbuild.run_make(Path(state.source_dir), ["mrproper"], make_vars=kbuild.make_vars(state.arch))


def phase_configure(state: BuildState, *, clean: bool = False) -> bool:
    """Base config, baked fragment + extra, olddefconfig; override/dropped warnings.

    A profile build configures from its profile alone (the base config is
    made again over any leftover ``.config``), and not at all when the
    configure stamp says nothing it reads has changed.
    """
    src = Path(state.source_dir)
    with timed(state, "configure"):
        try:
            phase_clean(state, clean=clean)
            baked = kconfig.baked_fragment()
            extra = state.extra_kconfig
            fragment = kconfig.merge_fragments(baked, extra)
            if extra is not None:
                for o in kconfig.overrides(baked, extra):
                    state.overrides.append(dataclasses.asdict(o))
                    state.warn(kconfig.format_override(o))
            make_vars = kbuild.make_vars(state.arch)
            if state.profile_build:
                changed = _configure_profile(state, src, baked, fragment, make_vars)
                needed = True
            else:
                needed = extra is not None or not kconfig.has_sched_ext(src)
                changed = needed and kconfig.configure_kernel(
                    src, fragment, base_config=state.base_config, make_vars=make_vars)
            if needed and extra is not None:
                for d in kconfig.dropped_lines(src, extra):
                    state.dropped.append(dataclasses.asdict(d))
                    state.warn(kconfig.format_dropped(d))
                build_facts.safe_config_lists(state, src, kconfig_parse_dir())
            return changed
        except KtstrError as exc:
            hint = " (check the --extra-kconfig / profile fragment)" if state.extra_kconfig else ""
            raise KtstrError(f"kernel configure failed{hint}: {exc}", kind=exc.kind) from exc


def _configure_profile(state: BuildState, src: Path, baked: str, fragment: str,
                       make_vars: list[str]) -> bool:
    digest = configstamp.inputs_digest(base_config=state.base_config, baked=baked,
                                       extra=state.extra_kconfig, arch=state.arch,
                                       make_vars=make_vars)
    # A patched (dirty) tree's Kconfig files are not those of its commit.
    why = None if state.is_dirty else configstamp.unchanged(src, digest)
    if why is not None:
        say(f"configure: {why}, skipped")
        state.configure_skipped = why
        return False
    changed = kconfig.configure_kernel(src, fragment, base_config=state.base_config,
                                       make_vars=make_vars, from_base=True)
    if state.is_dirty:
        configstamp.remove(src)
    else:
        configstamp.write(src, digest)
    return changed


def phase_make(state: BuildState, *, jobs: int | None = None) -> None:
    src = Path(state.source_dir)
    n = jobs or state.make_jobs or kbuild.available_parallelism()
    state.make_jobs = n
    collected = make_warnings.WarningCollector()
    key = make_estimate.profile_key(
        state.arch, state.base_config, state.kconfig_hash, state.extra_kconfig_hash)
    try:
        history = make_estimate.history_path()
    except KtstrError:
        history = None  # no cache root: no estimate, and the store phase will say why
    # A tree with a vmlinux rebuilds only what changed: no earlier count fits it.
    incremental = (src / "vmlinux").exists()
    estimate = make_estimate.MakeEstimate(
        make_estimate.load_history(key, history) if history else None,
        incremental=incremental, jobs=n)
    with timed(state, "make"):
        try:
            # No log_path: kbuild.py keeps the log only when the build fails.
            res = kbuild.run_make_streamed(src, jobs=n, make_vars=kbuild.make_vars(state.arch),
                                           on_line=collected, estimate=estimate.text)
        except KtstrError as exc:
            res = getattr(exc, "result", None)
            if res is not None:
                _take_make_counts(state, res)
            raise
        finally:
            state.build_warnings = collected.items
        _take_make_counts(state, res)
    if history is not None and not incremental and res.steps:
        make_estimate.record_history(
            key, make_estimate.MakeHistory(res.steps, round(res.seconds, 1), n), history)


def _take_make_counts(state: BuildState, res) -> None:
    state.make_warnings = res.warnings
    state.make_errors = res.errors
    state.failed_target = res.failed_target
    state.make_log = str(res.log_path) if getattr(res, "log_path", None) else None


def phase_validate(state: BuildState) -> None:
    with timed(state, "validate"):
        missing = kconfig.validate_kernel_config(Path(state.source_dir))
        if missing:
            hint = (
                " (an --extra-kconfig line may have disabled one of CONFIG_BPF, "
                "CONFIG_DEBUG_INFO_BTF, CONFIG_FTRACE, CONFIG_SCHED_CLASS_EXT)"
                if state.extra_kconfig
                else ""
            )
            raise KtstrError(
                f"post-build kernel config validation failed{hint}: "
                + kconfig.format_validation_error(missing),
                kind="validation",
            )


def phase_compile_commands(state: BuildState) -> Path | None:
    if state.is_temp:
        return None
    with timed(state, "compile_commands"):
        return kbuild.generate_compile_commands(
            Path(state.source_dir), make_vars=kbuild.make_vars(state.arch)
        )


def phase_store(state: BuildState) -> None:
    """Find the image, dirty gate, post-build re-check, metadata, atomic store, in ktstr's order."""
    from ktstr_steps import source

    src = Path(state.source_dir)
    with timed(state, "store"):
        image = kbuild.find_image(src, state.arch)
        vmlinux = src / "vmlinux"
        say(kbuild.vmlinux_message(src))
        config = src / ".config"
        state.config_hash = crc32_hex(config.read_bytes()) if config.is_file() else None
        build_facts.record_outputs(state, image, vmlinux, None)
        if state.is_dirty:
            say(f"kernel built at {image}")
            hint = DIRTY_TREE_CACHE_SKIP_HINT if state.is_git else NON_GIT_TREE_CACHE_SKIP_HINT
            say(hint)
            state.outcome = Outcome.DIRTY_NOT_CACHED if state.is_git else Outcome.NON_GIT_NOT_CACHED
            state.image_path = str(image)
            return
        if state.kind == "local":
            try:
                now = source.inspect_git(src)
                hash_changed = now.hash7 != state.git_hash
                if now.dirty or hash_changed:
                    say(
                        "source tree changed during build (acquire-time dirty="
                        f"{str(state.is_dirty).lower()}, post-build dirty={str(now.dirty).lower()}; "
                        f"hash_changed={str(hash_changed).lower()}); skipping cache store — "
                        "the built kernel may not match the commit"
                    )
                    state.outcome = Outcome.CHANGED_DURING_BUILD
                    state.image_path = str(image)
                    return
            except KtstrError as exc:
                state.warn(f"post-build dirty re-check failed; proceeding to cache store ({exc})")
        size = mtime = None
        if state.kind == "local" and vmlinux.is_file():
            st = vmlinux.stat()
            size, mtime = st.st_size, int(st.st_mtime // 1)
        meta = cache.KernelMetadata(
            source=cache.KernelSource.from_json(state.source_meta),
            arch=state.arch,
            image_name=state.image_name,
            built_at=cache.utc_now(),
            version=state.version,
            config_hash=state.config_hash,
            ktstr_kconfig_hash=state.kconfig_hash,
            extra_kconfig_hash=state.extra_kconfig_hash,
            source_vmlinux_size=size,
            source_vmlinux_mtime_secs=mtime,
        )
        try:
            entry = cache.store(
                state.cache_key,
                image,
                vmlinux=vmlinux if vmlinux.is_file() else None,
                metadata=meta,
                provenance=build_facts.provenance(state),
            )
        except (KtstrError, OSError) as exc:
            say(f"cache store failed: {exc}")
            state.outcome = Outcome.STORE_FAILED
            state.errors.append(error_json("store-failed", str(exc)))
            state.image_path = None if state.is_temp else str(image)
            return
        build_facts.record_outputs(state, image, vmlinux, entry)
        human_line(f"✓ Kernel cached: {state.cache_key}")
        say(f"image: {entry.image_path}")
        state.outcome = Outcome.CACHED
        state.entry_dir = str(entry.path)
        state.image_path = str(entry.image_path)


def run_kernel_phases(state: BuildState, *, clean: bool, jobs: int | None = None) -> None:
    """configure → make → validate → compile_commands → store, in ktstr's order."""
    phase_configure(state, clean=clean)
    phase_make(state, jobs=jobs)
    phase_validate(state)
    phase_compile_commands(state)
    phase_store(state)


def init_state(
    *,
    profile: str | None = None,
    base_config: str | None = None,
    extra_kconfig: Path | None = None,
) -> BuildState:
    from ktstr_steps import source

    state = BuildState()
    info = source.arch_info()
    state.arch, state.image_name, state.image_rel = info.arch, info.image_name, info.image_rel
    state.profile = profile
    state.base_config, state.extra_kconfig = resolve_config_inputs(
        profile=profile, base_config=base_config, extra_kconfig=extra_kconfig
    )
    state.fragments = fragment_identities(profile, extra_kconfig)
    return state


def fragment_identities(profile: str | None, extra_kconfig: Path | None) -> list[dict]:
    """Each extra fragment by file name and hash, in merge order (profile's, then the flag's)."""
    out = []
    if profile:
        for f in kconfig.load_profile(profile).extra_files:
            out.append(identity.fragment_identity(f.name, kconfig.load_extra_kconfig(f)))
    if extra_kconfig is not None:
        out.append(identity.fragment_identity(
            Path(extra_kconfig).name, kconfig.load_extra_kconfig(extra_kconfig)))
    return out


def kconfig_parse_dir() -> Path:
    """Where parsed Kconfig trees are kept between builds: the host's run directory."""
    from ktstr_steps.holder.state import run_dir

    return run_dir()


def remove_tree(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
