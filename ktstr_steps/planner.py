"""CPU cap, the LLC plan, and ktstr's LLC lock files.

A kernel build reserves whole LLCs by taking ``LOCK_SH`` on
``/tmp/ktstr-llc-{index}.lock`` — the same files and modes as ktstr, so a
ktstr perf-mode run (``LOCK_EX``) and a CI build exclude each other.

Deliberate differences from ktstr:

- An LLC held exclusively (a perf-mode run; mode WRITE in /proc/locks) is never
  preferred by the consolidation ranking and is planned only when the free and
  shared LLCs together cannot satisfy the target (ktstr would rank it first
  and fail while free LLCs exist).
- ``acquire_llc_plan(wait=N)``: where ktstr fails at once on contention, we
  re-plan and retry until N seconds pass, naming the holders while waiting.
- The allowed-CPU set has a seam (``allowed=`` argument, env
  ``KTSTR_CI_ALLOWED_CPUS``) so a plan on a recorded machine uses that
  machine's allowed set instead of this host's affinity.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ktstr_steps import flock
from ktstr_steps.cpulist import format_cpulist, parse_cpulist
from ktstr_steps.errors import KtstrError, ResourceContention
from ktstr_steps.flock import FileLock, Holder
from ktstr_steps.messages import LABEL, Progress, say
from ktstr_steps.topology import HostTopology

DEFAULT_LOCK_DIR = Path("/tmp")
DEFAULT_FRACTION = 0.30  # share of the allowed CPUs a build takes without --cpu-cap
POLL_SECONDS = 0.25
ALLOWED_ENV = "KTSTR_CI_ALLOWED_CPUS"


def llc_lock_path(index: int, lock_dir: Path = DEFAULT_LOCK_DIR) -> Path:
    return Path(lock_dir) / f"ktstr-llc-{index}.lock"


# -- cap -----------------------------------------------------------------------


def resolve_cap(cli_value: int | str | None, *, env: Mapping = os.environ) -> int | None:
    """``--cpu-cap`` value wins, else ``KTSTR_CPU_CAP``; None when neither.

    ``0`` and negatives are rejected here, not at parse time (ktstr's clap
    accepts ``--cpu-cap 0``). An empty env value means "no cap".
    """
    if cli_value is not None:
        if isinstance(cli_value, int):
            value = cli_value
        else:
            try:
                value = int(str(cli_value).strip())
            except ValueError:
                raise KtstrError(
                    f"--cpu-cap is not a valid integer: {cli_value!r} (expected a CPU count ≥ 1)",
                    kind="invalid-cpu-cap",
                ) from None
        return _check_cap(value)
    raw = env.get("KTSTR_CPU_CAP")
    if raw is None:
        return None
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise KtstrError(
                f"KTSTR_CPU_CAP is not valid UTF-8: {raw!r}", kind="invalid-cpu-cap"
            ) from None
    else:
        try:
            # os.environ carries undecodable bytes as surrogate escapes.
            raw.encode("utf-8")
        except UnicodeEncodeError:
            raise KtstrError(
                f"KTSTR_CPU_CAP is not valid UTF-8: {os.fsencode(raw)!r}", kind="invalid-cpu-cap"
            ) from None
    if raw == "":
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise KtstrError(
            f"KTSTR_CPU_CAP is not a valid integer: {raw!r} (invalid digit found in string)",
            kind="invalid-cpu-cap",
        ) from None
    if value < 0:
        # ktstr parses into usize, so a negative env value is "not a valid integer".
        raise KtstrError(
            f"KTSTR_CPU_CAP is not a valid integer: {raw!r} (a CPU count cannot be negative)",
            kind="invalid-cpu-cap",
        )
    return _check_cap(value)


CAP_BYPASS_CONFLICT = (
    "--cpu-cap conflicts with KTSTR_BYPASS_LLC_LOCKS=1; unset one of them. "
    "--cpu-cap is a resource contract; bypass disables the contract entirely."
)


def bypass_llc_locks() -> bool:
    """ktstr's rule: any non-empty KTSTR_BYPASS_LLC_LOCKS (even "0") bypasses."""
    return bool(os.environ.get("KTSTR_BYPASS_LLC_LOCKS"))


def refuse_cap_with_bypass(cli_value: int | str | None, *, env: Mapping = os.environ) -> None:
    """A CPU cap with ``KTSTR_BYPASS_LLC_LOCKS`` set is ktstr's "resource contract" error.

    Checked before the cap's value (ktstr: ``--cpu-cap 0`` with bypass reports
    the conflict) and before anything is looked up or downloaded. A cap from
    ``KTSTR_CPU_CAP`` conflicts too: ktstr only notices that after the download,
    and never on a cache hit.
    """
    if not bypass_llc_locks():
        return
    if cli_value is not None:
        raise KtstrError(CAP_BYPASS_CONFLICT, kind="resource-contract")
    env_cap = env.get("KTSTR_CPU_CAP")
    if env_cap:
        raise KtstrError(
            f"KTSTR_CPU_CAP={str(env_cap)[:20]} conflicts with KTSTR_BYPASS_LLC_LOCKS=1; unset one "
            "of them. A CPU cap is a resource contract; bypass disables the contract entirely.",
            kind="resource-contract",
        )


def _check_cap(value: int) -> int:
    if value < 1:
        raise KtstrError(f"--cpu-cap must be ≥ 1 CPU (got {value})", kind="invalid-cpu-cap")
    return value


# -- allowed CPUs ----------------------------------------------------------------


def allowed_cpus(*, env: Mapping = os.environ) -> set[int]:
    """CPUs this process may run on.

    ``KTSTR_CI_ALLOWED_CPUS`` (a CPU list, ``0-15,32-47``) overrides the real
    affinity — the seam for planning on recorded machines. Otherwise
    ``sched_getaffinity(0)``, falling back to ``Cpus_allowed_list`` in
    ``/proc/self/status``.
    """
    override = env.get(ALLOWED_ENV)
    if override:
        try:
            cpus = set(parse_cpulist(override))
        except ValueError as exc:
            raise KtstrError(
                f"{ALLOWED_ENV}={override!r} is not a CPU list ({exc})", kind="invalid-allowed"
            ) from None
        if not cpus:
            raise KtstrError(f"{ALLOWED_ENV}={override!r} names no CPU", kind="invalid-allowed")
        return cpus
    try:
        cpus = set(os.sched_getaffinity(0))
        if cpus:
            return cpus
    except OSError:
        pass
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                cpus = set(parse_cpulist(line.split(":", 1)[1]))
                if cpus:
                    return cpus
    except (OSError, ValueError):
        pass
    raise KtstrError(
        "could not determine the calling process's allowed CPU set (sched_getaffinity and "
        "/proc/self/status Cpus_allowed_list both failed)",
        kind="allowed-unknown",
    )


def target_cpus(cap: int | None, allowed: set[int]) -> int:
    """How many CPUs to reserve: the cap, else max(1, ceil(30 % of allowed))."""
    n = len(allowed)
    if cap is not None:
        if cap > n:
            raise ResourceContention(
                f"--cpu-cap {cap} = {cap} exceeds the {n} CPUs this process is allowed on "
                f"(allowed: {format_cpulist(allowed)}); lower --cpu-cap or widen the "
                "process's CPU affinity / cgroup cpuset"
            )
        return cap
    return max(1, math.ceil(DEFAULT_FRACTION * n))


# -- plan ------------------------------------------------------------------------


def plan_llcs(
    topo: HostTopology,
    target: int,
    allowed: set[int],
    holder_counts: Mapping[int, int],
    exclusive: set[int],
) -> list[int]:
    """Pick LLC indices for ``target`` CPUs, as ktstr ranks them (pure).

    The fix to ktstr: ``exclusive`` LLCs (held LOCK_EX) rank after every other
    LLC and are considered only when the others cannot reach the target.
    """
    contrib = {llc.index: sum(1 for c in llc.cpus if c in allowed) for llc in topo.llcs}
    eligible = [i for i, n in contrib.items() if n > 0]
    if not eligible:
        raise KtstrError(
            f"no host LLC overlaps the process's {len(allowed)}-CPU allowed set "
            f"({format_cpulist(allowed)}) — sysfs LLC groups and sched_getaffinity disagree; "
            "check the cpuset/affinity this process runs under",
            kind="no-llc-overlap",
        )
    open_llcs = [i for i in eligible if i not in exclusive]
    if sum(contrib[i] for i in open_llcs) >= target:
        pool = open_llcs
    else:
        # Only with the exclusively held LLCs can the target be met: plan them
        # (last), so the acquire fails on them and the caller waits or reports.
        pool = eligible
    if target >= sum(contrib[i] for i in pool):
        return sorted(pool)
    held = sorted(
        (i for i in pool if holder_counts.get(i, 0) > 0 and i not in exclusive),
        key=lambda i: (-holder_counts[i], i),
    )
    free = sorted(i for i in pool if holder_counts.get(i, 0) == 0 and i not in exclusive)
    last = sorted(i for i in pool if i in exclusive)
    ranked = held + free + last
    by_index = {llc.index: llc for llc in topo.llcs}
    anchor = by_index[ranked[0]].node
    nodes_with_llcs = sorted({by_index[i].node for i in ranked})
    # Stable sort keeps node-id order on ties; unknown distances (255) sort last.
    node_order = sorted(nodes_with_llcs, key=lambda n: topo.distance(anchor, n))
    chosen: list[int] = []
    total = 0
    for node in node_order:
        for i in ranked:
            if total >= target:
                break
            if by_index[i].node == node:
                chosen.append(i)
                total += contrib[i]
        if total >= target:
            break
    return sorted(chosen)


@dataclass
class LlcPlan:
    """A reservation plan; with ``locks`` held it is a reservation (``release()`` drops them)."""

    llcs: list[int]
    cpus: list[int]
    mems: list[int]
    make_jobs: int
    cross_node: bool
    locks: list[FileLock] = field(default_factory=list, repr=False)

    def release(self) -> None:
        # Reverse of the ascending acquire order; each release is idempotent.
        for lock in reversed(self.locks):
            lock.release()

    @property
    def held(self) -> bool:
        return any(lock.held for lock in self.locks)

    def to_json(self) -> dict:
        return {
            "llcs": list(self.llcs),
            "cpus": list(self.cpus),
            "mems": list(self.mems),
            "make_jobs": self.make_jobs,
            "cross_node": self.cross_node,
        }

    def __enter__(self) -> LlcPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def materialise(topo: HostTopology, selected: list[int], target: int, allowed: set[int]) -> LlcPlan:
    """CPUs of the selected LLCs (ascending) up to exactly ``target``; mems = their nodes."""
    by_index = {llc.index: llc for llc in topo.llcs}
    cpus: list[int] = []
    for i in sorted(selected):
        for c in by_index[i].cpus:
            if len(cpus) >= target:
                break
            if c in allowed:
                cpus.append(c)
    mems = sorted({topo.node_of_cpu.get(c, 0) for c in cpus})
    return LlcPlan(
        llcs=sorted(selected),
        cpus=sorted(cpus),
        mems=mems,
        make_jobs=max(1, len(cpus)),
        cross_node=len(mems) > 1,
    )


def cross_node_warning(plan: LlcPlan, topo: HostTopology) -> str | None:
    """ktstr's spill warning (literal ``ktstr:`` prefix); None for single-node plans."""
    if len(plan.mems) <= 1:
        return None
    by_index = {llc.index: llc for llc in topo.llcs}
    if topo.node_of_cpu:
        items = ", ".join(f"{i} (node {by_index[i].node})" for i in plan.llcs)
    else:
        items = ", ".join(str(i) for i in plan.llcs)
    return (
        f"ktstr: reserving LLCs [{items}] across {len(plan.mems)} NUMA nodes "
        "(preferred single-node contiguous unavailable). Build will run; "
        "memory-access latency may be higher."
    )


# -- discover / acquire ------------------------------------------------------------


@dataclass
class Snapshot:
    """One /proc/locks reading of every LLC lock file."""

    holders: dict[int, list[Holder]]

    @property
    def counts(self) -> dict[int, int]:
        return {i: len(h) for i, h in self.holders.items() if h}

    @property
    def exclusive(self) -> set[int]:
        return {i for i, hs in self.holders.items() if any(h.mode == "WRITE" for h in hs)}


def discover(
    topo: HostTopology, lock_dir: Path = DEFAULT_LOCK_DIR, *, create: bool = True
) -> Snapshot:
    """Holders of each LLC lock file, from one /proc/locks snapshot.

    ``create`` makes the lock files exist (as ktstr does) without locking them;
    a dry run passes False and only looks at files already there.
    """
    lines = flock.read_proc_locks()
    out: dict[int, list[Holder]] = {}
    for llc in topo.llcs:
        path = llc_lock_path(llc.index, lock_dir)
        if create:
            os.close(flock.open_lockfile(path))
        out[llc.index] = flock.holders(path, lines)
    return Snapshot(out)


def _holder_text(snapshot: Snapshot, llcs: list[int]) -> str:
    parts = []
    for i in llcs:
        hs = snapshot.holders.get(i, [])
        if hs:
            who = ", ".join(f"pid={h.pid} mode={h.mode} cmd={h.cmd}" for h in hs)
            parts.append(f"LLC {i}: {who}")
    return "; ".join(parts) if parts else "<none recorded>"


def dry_run_plan(
    topo: HostTopology,
    cap: int | None,
    *,
    allowed: set[int] | None = None,
    lock_dir: Path = DEFAULT_LOCK_DIR,
) -> LlcPlan:
    """The plan an acquire would make now, from the current holders; takes no lock."""
    allowed = allowed_cpus() if allowed is None else set(allowed)
    target = target_cpus(cap, allowed)
    snap = discover(topo, lock_dir, create=False)
    return materialise(
        topo, plan_llcs(topo, target, allowed, snap.counts, snap.exclusive), target, allowed
    )


def _try_lock_all(selected: list[int], lock_dir: Path) -> list[FileLock] | None:
    """LOCK_SH|LOCK_NB on each selected LLC ascending; None (nothing held) on contention."""
    held: list[FileLock] = []
    try:
        for i in sorted(selected):
            lock = FileLock.try_acquire(llc_lock_path(i, lock_dir), exclusive=False)
            if lock is None:
                for h in held:
                    h.release()
                return None
            held.append(lock)
    except BaseException:
        # An unusable lock file half-way must not leave the earlier LLCs held.
        for h in held:
            h.release()
        raise
    return held


def acquire_llc_plan(
    topo: HostTopology,
    cap: int | None,
    *,
    allowed: set[int] | None = None,
    wait: float = 0.0,
    lock_dir: Path = DEFAULT_LOCK_DIR,
    progress: Progress | None = None,
) -> LlcPlan:
    """DISCOVER → PLAN → LOCK_SH (ascending), with ktstr's one TOCTOU retry.

    ``wait`` 0 behaves like ktstr (contention fails at once with
    ResourceContention). ``wait > 0`` re-plans and retries every ~0.25 s until
    ``wait`` seconds pass, announcing the holders once (``say``) and reporting
    progress (phase ``reserve``) meanwhile. No lock is held on any error path.
    """
    allowed = allowed_cpus() if allowed is None else set(allowed)
    target = target_cpus(cap, allowed)
    start = time.monotonic()
    announced = False
    while True:
        selected: list[int] = []
        for _attempt in range(2):  # ktstr: two attempts, the second DISCOVER is the backoff
            snap = discover(topo, lock_dir)
            selected = plan_llcs(topo, target, allowed, snap.counts, snap.exclusive)
            locks = _try_lock_all(selected, lock_dir)
            if locks is not None:
                plan = materialise(topo, selected, target, allowed)
                plan.locks = locks
                if announced:
                    if progress is not None:
                        progress.done()
                    say(f"reserved LLCs {selected} after waiting {time.monotonic() - start:.1f}s")
                return plan
        snap = discover(topo, lock_dir)
        who = _holder_text(snap, selected)
        elapsed = time.monotonic() - start
        if wait <= 0 or elapsed >= wait:
            if announced and progress is not None:
                progress.done()  # clear a rewritten terminal line before the error
            waited = f" (waited {elapsed:.1f}s of --wait {wait:g}s)" if wait > 0 else ""
            raise ResourceContention(
                f"acquire_llc_plan: could not reserve {target} CPU(s) after 2 TOCTOU retry{waited}; "
                f"holders: {who}. Run `{LABEL} locks --json` (or `ktstr locks --json`) "
                "to see every holder, wait for them to finish, or lower --cpu-cap."
            )
        if not announced:
            announced = True
            say(
                f"LLCs {selected} for {target} CPU(s) are busy — waiting up to {wait:g}s; held by: {who}"
            )
            if progress is None:
                progress = Progress("reserve")
        progress.update(f"waiting {elapsed:.0f}s/{wait:g}s for LLCs {selected}; held by: {who}")
        time.sleep(min(POLL_SECONDS, max(0.0, wait - elapsed)))
