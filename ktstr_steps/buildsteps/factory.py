"""The kernel build factory: one function composes every kind of kernel build from its parts.

Every kernel builder (pushes and forced builds, try builds, builds of polled
or webhook repositories, matrix cells) gets its factory from
:func:`kernel_build_factory`, called with the parts that make it what it is:

* ``checkout``, where the tree comes from (:class:`Checkout`): the builder's
  per-branch tree fetched with git (``BRANCH_TREE``); that tree with a try
  patch applied on top (``TRY_TREE``); a kernel.org release tarball that the
  lookup extracts into the tree store (``RELEASE_TREE``);
* ``lookup``, how the cache key is found (:class:`Lookup`): from the checked
  out tree (``BY_TREE``), or from the release version (``BY_VERSION``) before
  any reservation, so a cached release costs no download and no reservation;
  it follows from the checkout unless given;
* ``repourl`` for a git tree, ``releases`` (:class:`ReleaseSource`) for a
  release tree;
* ``profile``, ``cpu_cap``, ``lock_wait``, ``force``, ``clean``, ``ktstr_ci``.

The steps, in build order (a git tree)::

    revision-lookup, remote-lookup, reserve, source-lock, checkout, cache-lookup,
    remote-lookup-tree, configure, make, validate, compile-commands, cache-store,
    publish, record, release

The revision lookup keys the commit the change carries with the profile,
before any tree exists; on a hit reserve..cache-store are skipped
(``doStepIf``), so a commit built on any branch costs no clone, no tree and
no source lock, and release has nothing to give back. A miss there asks the
master for the same key (remote-lookup: another host's published entry,
verified and installed in this host's cache, outcome ``remote-hit``) with the
same effect; remote-lookup-tree asks for the tree lookup's key when that is a
key not asked for yet. Without a full commit id
(or when forced) it is skipped and cache-lookup keys the checked-out tree; a
try build has no revision lookup (its patch is not in the commit). A hit of
cache-lookup skips configure..cache-store and the build
succeeds; any failure halts the kernel phases; record and release always run,
also after a stop, so every build is recorded and nothing stays held. A
release tree starts with its lookup instead, which on a miss adds reserve,
source-lock and the kernel phases after itself and release at the end
(:class:`ktstr_steps.buildsteps.matrix_cell.MatrixLookup`); publish and record
run for every cell, hit or not.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from buildbot import config
from buildbot.interfaces import IRenderable
from buildbot.process.buildstep import BuildStep
from buildbot.process.factory import BuildFactory
from buildbot.process.properties import Property

from ktstr_steps.buildsteps.checkout import KernelCheckout, TryCheckout
from ktstr_steps.buildsteps.compile_commands import CompileCommands
from ktstr_steps.buildsteps.configure import Configure
from ktstr_steps.buildsteps.lookup import (
    CacheLookup,
    RevisionLookup,
    held_something,
    not_cache_hit,
)
from ktstr_steps.buildsteps.make import KernelMake
from ktstr_steps.buildsteps.matrix_cell import EXTRACTED_TREE, MatrixLookup
from ktstr_steps.buildsteps.publish import PublishKernel
from ktstr_steps.buildsteps.record import Record
from ktstr_steps.buildsteps.release import Release
from ktstr_steps.buildsteps.remote_lookup import RemoteLookup
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
    "tree_action",
    "tree_seed",
    "cache_key",
    "hit_before_checkout",
    "remote_lookup_key",
    "remote_lookup_tried",
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


class Lookup(enum.Enum):
    """How a build finds its cache key."""

    BY_TREE = "by-tree"  # phase lookup --source: the checked-out tree's commit and state
    BY_VERSION = "by-version"  # phase lookup --version: the release, before any reservation


class Checkout(enum.Enum):
    """Where a build's kernel tree comes from."""

    BRANCH_TREE = "branch-tree"  # the builder's per-branch tree, fetched with git
    TRY_TREE = "try-tree"  # that tree with the try patch applied (a dirty tree)
    RELEASE_TREE = "release-tree"  # a kernel.org release tarball, extracted by the lookup

    @property
    def lookup(self) -> Lookup:
        """The lookup this tree needs: a release tree exists only once its lookup fetched it."""
        return Lookup.BY_VERSION if self is Checkout.RELEASE_TREE else Lookup.BY_TREE


@dataclass(frozen=True)
class ReleaseSource:
    """Where a release tree's tarball comes from: the host's download cache and the mirrors."""

    download_cache: str
    mirror: str | None = None
    rc_mirror: str | None = None
    max_files: int = 0  # download cache limits; 0 = no limit
    max_gb: float = 0.0


def parts_problem(checkout: Checkout, lookup: Lookup, repourl: Any,
                  releases: ReleaseSource | None) -> str | None:
    """Why these parts make no build, or None."""
    if lookup is not checkout.lookup:
        return (f"a {checkout.value} checkout is looked up {checkout.lookup.value}, "
                f"not {lookup.value}")
    if checkout is Checkout.RELEASE_TREE:
        if releases is None:
            return "a release tree needs releases= (the download cache and mirrors)"
        if repourl is not None:
            return "a release tree is not fetched with git: give no repourl"
        return None
    if repourl is None:
        return f"a {checkout.value} checkout needs the repository URL (repourl=)"
    if releases is not None:
        return f"a {checkout.value} checkout downloads no release: give no releases="
    return None


def kernel_build_factory(
    *,
    profile: str | IRenderable,
    checkout: Checkout = Checkout.BRANCH_TREE,
    lookup: Lookup | None = None,
    repourl: str | IRenderable | None = None,
    releases: ReleaseSource | None = None,
    cpu_cap: int | IRenderable | None = None,
    lock_wait: int = 3600,
    force: bool | IRenderable = False,
    clean: bool | IRenderable = False,
    ktstr_ci: str = "ktstr-ci",
) -> BuildFactory:
    """The factory of one kind of kernel build, composed from its parts (module docstring)."""
    lookup = checkout.lookup if lookup is None else lookup
    problem = parts_problem(checkout, lookup, repourl, releases)
    if problem is not None:
        config.error(f"kernel_build_factory: {problem}", always_raise=True)
    cap = DEFAULT_CPU_CAP if cpu_cap is None else cpu_cap
    kernel_phase = {"ktstr_ci": ktstr_ci, "doStepIf": not_cache_hit}
    phases: list[BuildStep] = [
        Configure(clean=clean, **kernel_phase),
        KernelMake(**kernel_phase),
        Validate(**kernel_phase),
        CompileCommands(**kernel_phase),
        CacheStore(**kernel_phase),
    ]
    reserve = Reserve(cpu_cap=cap, lock_wait=lock_wait, ktstr_ci=ktstr_ci)
    # Before release: the source tree's files are still this build's under its lock.
    every_build = [PublishKernel(ktstr_ci=ktstr_ci), Record(ktstr_ci=ktstr_ci)]
    release = Release(ktstr_ci=ktstr_ci)
    factory = BuildFactory()
    if lookup is Lookup.BY_TREE:
        if checkout is Checkout.TRY_TREE:
            # A try build is its patch on top of the commit: only its tree says what it is.
            first: list[BuildStep] = []
            tree_steps = [reserve, SourceLock(lock_wait=lock_wait, ktstr_ci=ktstr_ci),
                          TryCheckout(repourl=repourl, ktstr_ci=ktstr_ci)]
        else:
            first = [RevisionLookup(profile=profile, force=force, ktstr_ci=ktstr_ci),
                     RemoteLookup(before_checkout=True, ktstr_ci=ktstr_ci)]
            tree_steps = [
                Reserve(cpu_cap=cap, lock_wait=lock_wait, ktstr_ci=ktstr_ci,
                        doStepIf=not_cache_hit),
                SourceLock(lock_wait=lock_wait, ktstr_ci=ktstr_ci, doStepIf=not_cache_hit),
                KernelCheckout(repourl=repourl, ktstr_ci=ktstr_ci, doStepIf=not_cache_hit),
            ]
        factory.addSteps([
            *first,
            *tree_steps,
            CacheLookup(profile=profile, force=force, ktstr_ci=ktstr_ci,
                        doStepIf=not_cache_hit),
            RemoteLookup(name="remote-lookup-tree", ktstr_ci=ktstr_ci),
            *phases,
            *every_build,
            Release(ktstr_ci=ktstr_ci, doStepIf=held_something),
        ])
        return factory
    assert releases is not None  # parts_problem refused a release tree without it
    miss = [reserve, SourceLock(tree=EXTRACTED_TREE, lock_wait=lock_wait, ktstr_ci=ktstr_ci),
            *phases]
    factory.addStep(MatrixLookup(
        profile=profile, force=force, download_cache=releases.download_cache,
        mirror=releases.mirror, rc_mirror=releases.rc_mirror, ktstr_ci=ktstr_ci,
        download_max_files=releases.max_files, download_max_gb=releases.max_gb,
        # Step factories, not steps: every build makes its own steps from them.
        miss_steps=[s.get_step_factory() for s in miss],
        release_steps=[release.get_step_factory()],
    ))
    factory.addSteps(every_build)
    return factory


__all__ = [
    "KERNEL_PROPERTIES",
    "Checkout",
    "Lookup",
    "ReleaseSource",
    "kernel_build_factory",
]
