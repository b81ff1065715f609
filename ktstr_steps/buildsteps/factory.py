"""The kernel build factory: every step of one build, in order (DESIGN.md "Data flow")."""

from __future__ import annotations

from buildbot.interfaces import IRenderable
from buildbot.process.factory import BuildFactory
from buildbot.process.properties import Property

from ktstr_steps.buildsteps.checkout import KernelCheckout
from ktstr_steps.buildsteps.compile_commands import CompileCommands
from ktstr_steps.buildsteps.configure import Configure
from ktstr_steps.buildsteps.lookup import CacheLookup, not_cache_hit
from ktstr_steps.buildsteps.make import KernelMake
from ktstr_steps.buildsteps.publish import PublishKernel
from ktstr_steps.buildsteps.record import Record
from ktstr_steps.buildsteps.release import Release
from ktstr_steps.buildsteps.reserve import Reserve
from ktstr_steps.buildsteps.sourcelock import SourceLock
from ktstr_steps.buildsteps.store import CacheStore
from ktstr_steps.buildsteps.validate import Validate

# The build properties a kernel build sets (besides Buildbot's own and the Git step's
# got_revision); the master lists them in the UI and REST clients may rely on them.
KERNEL_PROPERTIES: tuple[str, ...] = (
    "holder_name",
    "sandbox_kind",
    "llcs",
    "llc_cpus",
    "llc_cpuset",
    "make_jobs",
    "source_tree",
    "cache_key",
    "kernel_profile",
    "kernel_outcome",
    "config_overrides",
    "config_dropped",
    "make_warnings",
    "make_errors",
    "config_missing",
    "compile_commands",
    "image_path",
    "config_hash",
    "entry_dir",
    "phase_seconds",
    "diff_hash",
    "artifacts_url",
    "record_id",
    "released",
)

# A worker pinned to one LLC group carries llc_ncpus: reserve that whole group.
DEFAULT_CPU_CAP = Property("llc_ncpus", default=None)


def kernel_build_factory(
    *,
    repourl: str | IRenderable,
    profile: str | IRenderable,
    cpu_cap: int | IRenderable | None = None,
    lock_wait: int = 3600,
    force: bool | IRenderable = False,
    clean: bool | IRenderable = False,
    ktstr_ci: str = "ktstr-ci",
) -> BuildFactory:
    """reserve → source-lock → checkout → cache-lookup → configure → make → validate →
    compile-commands → cache-store → publish → record → release.

    A cache hit skips configure..cache-store (doStepIf) and the build succeeds;
    any failure halts the kernel phases; record and release always run, also
    after a stop, so every build is recorded and nothing stays held.
    """
    cap = DEFAULT_CPU_CAP if cpu_cap is None else cpu_cap
    kernel_phase = {"ktstr_ci": ktstr_ci, "doStepIf": not_cache_hit}
    factory = BuildFactory()
    factory.addSteps([
        Reserve(cpu_cap=cap, lock_wait=lock_wait, ktstr_ci=ktstr_ci),
        SourceLock(lock_wait=lock_wait, ktstr_ci=ktstr_ci),
        KernelCheckout(repourl=repourl),
        CacheLookup(profile=profile, force=force, ktstr_ci=ktstr_ci),
        Configure(clean=clean, **kernel_phase),
        KernelMake(**kernel_phase),
        Validate(**kernel_phase),
        CompileCommands(**kernel_phase),
        CacheStore(**kernel_phase),
        # Before release: the source tree's files are still this build's under its lock.
        PublishKernel(ktstr_ci=ktstr_ci),
        Record(ktstr_ci=ktstr_ci),
        Release(ktstr_ci=ktstr_ci),
    ])
    return factory
