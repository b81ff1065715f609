"""ktstr's kernel build pipeline (reference §1), phase by phase.

A build's state is a :class:`BuildState`, JSON-serialisable so the phases can
run in one process (``ktstr-ci kernel build``) or as separate commands driven
by Buildbot steps (``ktstr-ci phase ...``), which persist it in a state file.
Each phase function mutates the state and records its duration; errors are
:class:`KtstrError` and leave the outcome ``failed``.

Deliberate changes from ktstr (each fixes a defect of reference §14):

- A cfg-keyed lookup miss falls back to the entry built from the same commit
  without a ``.config`` when that entry's final ``config_hash`` equals the
  tree's current ``.config``: ktstr rebuilds the kernel it just built (§14.7).
- ``--clean`` on a local tree keys the build as if ``.config`` were absent,
  since ``mrproper`` deletes it before configure (§14.7).
- The configure probe counts only semantic lines (§14.8, in kconfig.py).
- compile_commands.json is generated from the ``.cmd`` files, so it never
  rebuilds the tree (kbuild.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ktstr_steps import cache, kbuild, kconfig, keys
from ktstr_steps.errors import KtstrError
from ktstr_steps.keys import crc32_hex
from ktstr_steps.messages import LABEL, say, warn

OUTCOMES = (
    "cached",
    "cache-hit",
    "dirty-not-cached",
    "non-git-not-cached",
    "changed-during-build",
    "store-failed",
    "failed",
)

DIRTY_TREE_CACHE_SKIP_HINT = (
    "skipping cache — working tree has uncommitted changes; commit or stash to enable caching"
)
NON_GIT_TREE_CACHE_SKIP_HINT = (
    "skipping cache — source tree is not a git repository so dirty state cannot be "
    "detected; put the source under git, or replace `--source` with "
    f"`{LABEL} kernel build VERSION` (a released kernel) or "
    f"`{LABEL} kernel build --git URL --ref REF` (a git tree) — to enable caching"
)


@dataclass
class BuildState:
    """Everything one build knows; persisted between phase commands."""

    # source (from acquisition)
    source_dir: str = ""
    kind: str = "local"  # local | git | tarball
    version: str | None = None
    ref: str | None = None
    git_hash: str | None = None
    canonical_path: str | None = None
    is_temp: bool = False
    is_dirty: bool = False
    is_git: bool = False
    config_crc: str | None = None
    # sha256 of `git diff HEAD` when a git tree is dirty (try builds): which change was built.
    diff_hash: str | None = None
    source_meta: dict = field(default_factory=dict)
    # identity
    arch: str = ""
    image_name: str = ""
    image_rel: str = ""
    base_config: str = "defconfig"
    profile: str | None = None
    extra_kconfig: str | None = None  # fragment text (profile fragments + --extra-kconfig)
    kconfig_hash: str = ""
    extra_kconfig_hash: str | None = None
    cache_key: str = ""
    # reservation
    make_jobs: int | None = None
    llcs: list[int] = field(default_factory=list)
    llc_cpus: list[int] = field(default_factory=list)
    holder: str | None = None
    # results
    outcome: str | None = None
    entry_dir: str | None = None
    image_path: str | None = None
    config_hash: str | None = None
    make_warnings: int = 0
    make_errors: int = 0
    failed_target: str | None = None
    make_log: str | None = None
    overrides: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)

    # -- persistence --------------------------------------------------------
    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> BuildState:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise KtstrError(
                f"build state {path} does not exist: run `{LABEL} phase lookup --state {path} "
                "--source DIR` first",
                kind="no-state",
            ) from None
        except (OSError, ValueError) as exc:
            raise KtstrError(f"build state {path} is unreadable: {exc}", kind="bad-state") from exc
        redo = f"it is written by `{LABEL} phase lookup`: run the build again from lookup"
        if not isinstance(data, dict):
            raise KtstrError(
                f"build state {path} holds a JSON {type(data).__name__}, not an object; {redo}",
                kind="bad-state",
            )
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, value in data.items():
            if name in fields and not _is_type(value, str(fields[name].type)):
                raise KtstrError(
                    f"build state {path}: {name} must be {fields[name].type}, not "
                    f"{json.dumps(value)[:40]}; {redo}",
                    kind="bad-state",
                )
        return cls(**{k: v for k, v in data.items() if k in fields})

    # -- bookkeeping --------------------------------------------------------
    def warn(self, msg: str) -> None:
        warn(msg)
        self.warnings.append(msg)

    def fail(self, exc: KtstrError) -> None:
        self.outcome = "failed"
        self.errors.append({"kind": exc.kind, "message": str(exc)})

    @property
    def ok(self) -> bool:
        return self.outcome != "failed"

    def result(self) -> dict:
        """The build result object of docs/contracts.md."""
        return {
            "ok": self.ok,
            "outcome": self.outcome,
            "cache_key": self.cache_key or None,
            "entry_dir": self.entry_dir,
            "image_path": self.image_path,
            "config_hash": self.config_hash,
            "kconfig_hash": self.kconfig_hash or None,
            "extra_kconfig_hash": self.extra_kconfig_hash,
            "dirty": self.is_dirty,
            "is_git": self.is_git,
            "git_hash": self.git_hash,
            "diff_hash": self.diff_hash,
            "source": self.source_meta,
            "source_dir": self.source_dir,
            "version": self.version,
            "base_config": self.base_config,
            "profile": self.profile,
            "make_jobs": self.make_jobs,
            "llcs": self.llcs,
            "llc_cpus": self.llc_cpus,
            "make_warnings": self.make_warnings,
            "make_errors": self.make_errors,
            "failed_target": self.failed_target,
            "make_log": self.make_log,
            "overrides": self.overrides,
            "dropped": self.dropped,
            "warnings": self.warnings,
            "errors": self.errors,
            "phases": self.phases,
        }


_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str, "bool": bool, "int": int, "float": (int, float), "dict": dict, "list": list,
}  # fmt: skip


def _is_type(value: object, annotation: str) -> bool:
    """Whether a JSON value fits a BuildState annotation such as ``list[int]`` or ``str | None``."""
    for alt in (a.strip() for a in annotation.split("|")):
        base, _, inner = alt.partition("[")
        inner = inner[:-1] if inner.endswith("]") else inner
        if base == "None":
            if value is None:
                return True
            continue
        if isinstance(value, bool) and base != "bool":
            continue  # JSON true is not a number here
        typ = _JSON_TYPES.get(base)
        if typ is None:
            return True  # not a JSON type: nothing to check here
        if not isinstance(value, typ):
            continue
        if base == "list" and inner and not all(_is_type(v, inner) for v in value):
            continue
        if base == "dict" and inner:
            key_t, _, val_t = inner.partition(",")
            if not all(_is_type(k, key_t) and _is_type(v, val_t) for k, v in value.items()):
                continue
        return True
    return False


@contextmanager
def timed(state: BuildState, phase: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        state.phases[phase] = round(state.phases.get(phase, 0.0) + time.monotonic() - start, 3)


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


def compute_key(state: BuildState, src, *, clean: bool = False) -> str:
    """The cache key of this build (ktstr's formats + our base-config suffix)."""
    state.kconfig_hash = kconfig.kconfig_hash()
    state.extra_kconfig_hash = kconfig.extra_kconfig_hash(state.extra_kconfig)
    suffix = keys.kconfig_suffix(state.kconfig_hash, state.extra_kconfig_hash) + keys.base_suffix(
        state.base_config
    )
    if clean and src.kind == "local":
        # mrproper will delete .config before configure: key what will be built.
        src = dataclasses.replace(src, config_crc=None)
        state.config_crc = None
    state.cache_key = src.cache_key(suffix)
    return state.cache_key


def lookup_cached(state: BuildState) -> cache.CacheEntry | None:
    """Cache lookup for the state's key, with the §14.7 fallback for cfg-keyed local trees."""
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
    state.outcome = "cache-hit"
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
    """Base config, baked fragment + extra, olddefconfig; override/dropped warnings."""
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
            needed = extra is not None or not kconfig.has_sched_ext(src)
            changed = False
            if needed:
                changed = kconfig.configure_kernel(
                    src,
                    fragment,
                    base_config=state.base_config,
                    make_vars=kbuild.make_vars(state.arch),
                )
                if extra is not None:
                    for d in kconfig.dropped_lines(src, extra):
                        state.dropped.append(dataclasses.asdict(d))
                        state.warn(kconfig.format_dropped(d))
            return changed
        except KtstrError as exc:
            hint = " (check the --extra-kconfig / profile fragment)" if state.extra_kconfig else ""
            raise KtstrError(f"kernel configure failed{hint}: {exc}", kind=exc.kind) from exc


def phase_make(state: BuildState, *, jobs: int | None = None) -> None:
    src = Path(state.source_dir)
    n = jobs or state.make_jobs or kbuild.available_parallelism()
    state.make_jobs = n
    with timed(state, "make"):
        try:
            # No log_path: kbuild.py keeps the log only when the build fails.
            res = kbuild.run_make_streamed(src, jobs=n, make_vars=kbuild.make_vars(state.arch))
        except KtstrError as exc:
            res = getattr(exc, "result", None)
            if res is not None:
                _take_make_counts(state, res)
            raise
        _take_make_counts(state, res)


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
    """Find the image, dirty gate, post-build re-check, metadata, atomic store (§1.3 9–14)."""
    from ktstr_steps import source

    src = Path(state.source_dir)
    with timed(state, "store"):
        image = kbuild.find_image(src, state.arch)
        vmlinux = src / "vmlinux"
        say(kbuild.vmlinux_message(src))
        config = src / ".config"
        state.config_hash = crc32_hex(config.read_bytes()) if config.is_file() else None
        if state.is_dirty:
            say(f"kernel built at {image}")
            hint = DIRTY_TREE_CACHE_SKIP_HINT if state.is_git else NON_GIT_TREE_CACHE_SKIP_HINT
            say(hint)
            state.outcome = "dirty-not-cached" if state.is_git else "non-git-not-cached"
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
                    state.outcome = "changed-during-build"
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
            )
        except (KtstrError, OSError) as exc:
            say(f"cache store failed: {exc}")
            state.outcome = "store-failed"
            state.errors.append({"kind": "store-failed", "message": str(exc)})
            state.image_path = None if state.is_temp else str(image)
            return
        print(f"✓ Kernel cached: {state.cache_key}", file=__import__("sys").stderr, flush=True)
        say(f"image: {entry.image_path}")
        state.outcome = "cached"
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
    return state


def remove_tree(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
