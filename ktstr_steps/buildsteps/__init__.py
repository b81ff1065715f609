"""Buildbot steps that drive the ``ktstr-ci`` worker command, and the kernel build factory.

The only Buildbot imports of the ``ktstr_steps`` package live here. The steps
never import the master: they find its services by name
(:mod:`ktstr_steps.buildsteps.services`).
"""

from ktstr_steps.buildsteps.base import KtstrCiStep, branch_dir, holder_name, tree_path
from ktstr_steps.buildsteps.checkout import KernelCheckout, TryCheckout
from ktstr_steps.buildsteps.compile_commands import CompileCommands
from ktstr_steps.buildsteps.configure import Configure
from ktstr_steps.buildsteps.factory import (
    KERNEL_PROPERTIES,
    Checkout,
    Lookup,
    ReleaseSource,
    kernel_build_factory,
)
from ktstr_steps.buildsteps.lookup import CacheLookup, RevisionLookup, not_cache_hit
from ktstr_steps.buildsteps.make import KernelMake
from ktstr_steps.buildsteps.record import Record
from ktstr_steps.buildsteps.release import Release
from ktstr_steps.buildsteps.remote_lookup import RemoteLookup
from ktstr_steps.buildsteps.reserve import Reserve
from ktstr_steps.buildsteps.sourcelock import SourceLock
from ktstr_steps.buildsteps.store import CacheStore
from ktstr_steps.buildsteps.validate import Validate

__all__ = [
    "KERNEL_PROPERTIES",
    "CacheLookup",
    "RevisionLookup",
    "CacheStore",
    "Checkout",
    "CompileCommands",
    "Configure",
    "KernelCheckout",
    "KernelMake",
    "KtstrCiStep",
    "Lookup",
    "Record",
    "Release",
    "RemoteLookup",
    "ReleaseSource",
    "Reserve",
    "SourceLock",
    "TryCheckout",
    "Validate",
    "branch_dir",
    "holder_name",
    "kernel_build_factory",
    "not_cache_hit",
    "tree_path",
]
