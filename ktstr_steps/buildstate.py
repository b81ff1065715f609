"""The state of one kernel build, carried between the phase commands in a JSON file.

A build's state is a :class:`BuildState`, JSON-serialisable so the phases can
run in one process (``ktstr-ci kernel build``) or as separate commands driven
by Buildbot steps (``ktstr-ci phase ...``), which persist it in a state file.
Its :meth:`BuildState.result` is the build result object every command prints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ktstr_steps.errors import KtstrError
from ktstr_steps.messages import LABEL, warn
from ktstr_steps.results import BuildResult, Outcome, error_json, fits_annotation


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
    # Configured from its profile alone (CI's builds): the tree's .config is no input.
    profile_build: bool = False
    configure_skipped: str | None = None  # why configure did nothing (the configure stamp)
    extra_kconfig: str | None = None  # fragment text (profile fragments + --extra-kconfig)
    kconfig_hash: str = ""
    extra_kconfig_hash: str | None = None
    cache_key: str = ""
    # extra fragments by name: [{"name", "hash"}] (profile fragments, then --extra-kconfig)
    fragments: list[dict] = field(default_factory=list)
    identity: dict | None = None  # identity.build_identity, set by lookup
    explanation: str | None = None  # why make runs (lookup miss); None on a hit
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
    config_overrides: list[dict] = field(default_factory=list)  # {symbol, requested, effective}
    config_dropped: list[dict] = field(default_factory=list)  # ... and reason
    config_symbols: dict[str, str] | None = None  # the final .config's set symbols
    build_warnings: list[dict] = field(default_factory=list)  # {file, line, message}
    bzimage_bytes: int | None = None
    vmlinux_bytes: int | None = None
    vmlinux_stripped_bytes: int | None = None
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
            if name in fields and not fits_annotation(value, str(fields[name].type)):
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
        self.outcome = Outcome.FAILED
        self.errors.append(error_json(exc.kind, str(exc)))

    @property
    def ok(self) -> bool:
        return self.outcome != Outcome.FAILED

    def result(self) -> BuildResult:
        """The build result object (:class:`ktstr_steps.results.BuildResult`)."""
        return BuildResult(
            ok=self.ok,
            outcome=self.outcome,
            cache_key=self.cache_key or None,
            entry_dir=self.entry_dir,
            image_path=self.image_path,
            config_hash=self.config_hash,
            kconfig_hash=self.kconfig_hash or None,
            extra_kconfig_hash=self.extra_kconfig_hash,
            dirty=self.is_dirty,
            is_git=self.is_git,
            git_hash=self.git_hash,
            diff_hash=self.diff_hash,
            source=self.source_meta,
            source_dir=self.source_dir,
            version=self.version,
            base_config=self.base_config,
            profile=self.profile,
            make_jobs=self.make_jobs,
            llcs=self.llcs,
            llc_cpus=self.llc_cpus,
            make_warnings=self.make_warnings,
            make_errors=self.make_errors,
            failed_target=self.failed_target,
            make_log=self.make_log,
            overrides=self.overrides,
            dropped=self.dropped,
            identity=self.identity,
            explanation=self.explanation,
            config_overrides=self.config_overrides,
            config_dropped=self.config_dropped,
            config_symbols=self.config_symbols,
            build_warnings=self.build_warnings,
            bzimage_bytes=self.bzimage_bytes,
            vmlinux_bytes=self.vmlinux_bytes,
            vmlinux_stripped_bytes=self.vmlinux_stripped_bytes,
            warnings=self.warnings,
            errors=self.errors,
            phases=self.phases,
        )


@contextmanager
def timed(state: BuildState, phase: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        state.phases[phase] = round(state.phases.get(phase, 0.0) + time.monotonic() - start, 3)
