"""How far a kernel make is: the previous full build of the same profile, and the estimate.

While make runs, its progress line says ``412/1,530 (27 %), about 2 min
left``. The total and the time come from the last *full* build (a tree
without ``vmlinux`` before make) of the same profile on this host: its count
of kbuild step lines (``  CC  kernel/fork.o`` and the like) and its make
time. An incremental build rebuilds only what changed, so no earlier count
says how many steps it has; it and a first build say so instead of guessing.

The history is one small JSON file per host in the kernel cache root,
``.ktstr-ci-make-history.json``, keyed by profile identity (arch, base
config, the baked fragment's and the extra fragments' hashes). A dot name:
ktstr and ``kernel list`` skip dot names in the cache root. It lives there,
not beside the tree, because terminal builds of a version or a git URL use a
temporary tree and every new branch starts a new one. It is a hint: an
unreadable or missing file only means "no estimate", and two builds ending at
once may each write it (the later one wins, whole, by rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ktstr_steps.cache.root import cache_root

HISTORY_FILE = ".ktstr-ci-make-history.json"

# Before this share of the steps, the previous build's time is a better guide
# than this build's own pace (the first steps are host tools and headers).
_OWN_PACE_AFTER = 0.10


@dataclass(frozen=True)
class MakeHistory:
    """One full make of a profile: kbuild step lines, seconds, make -j."""

    steps: int
    seconds: float
    jobs: int


def profile_key(arch: str, base_config: str, kconfig_hash: str, extra_hash: str | None) -> str:
    """The identity of a profile's make, whatever the commit: what makes two builds alike."""
    return "/".join([arch or "-", base_config or "-", kconfig_hash or "-", extra_hash or "-"])


def history_path(root: Path | None = None) -> Path:
    return Path(root if root is not None else cache_root()) / HISTORY_FILE


def _read_all(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_history(key: str, path: Path) -> MakeHistory | None:
    """The last full make of ``key``, or None (none recorded, or an unusable file)."""
    entry = _read_all(path).get(key)
    if not isinstance(entry, dict):
        return None
    try:
        history = MakeHistory(int(entry["steps"]), float(entry["seconds"]), int(entry["jobs"]))
    except (KeyError, TypeError, ValueError):
        return None
    if history.steps < 1 or history.seconds < 0 or history.jobs < 1:
        return None
    return history


def record_history(key: str, history: MakeHistory, path: Path) -> bool:
    """Remember a full make of ``key``; False when the file could not be written (a hint only)."""
    data = _read_all(path)
    data[key] = asdict(history)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=HISTORY_FILE + ".", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        return False
    return True


def format_duration(seconds: float) -> str:
    """``40 s``, ``2 min``, ``1 h 05 min``: as precise as an estimate deserves."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{max(5, int(round(seconds / 5.0)) * 5)} s"
    minutes = int(round(seconds / 60.0))
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class MakeEstimate:
    """The progress text of one make, from the previous full make of its profile."""

    def __init__(self, previous: MakeHistory | None, *, incremental: bool, jobs: int) -> None:
        self.previous = previous
        self.incremental = incremental
        self.jobs = max(1, jobs)

    def text(self, steps: int, elapsed: float) -> str:
        count = f"{steps:,} step" + ("" if steps == 1 else "s")
        if self.incremental:
            return f"{count}, incremental build: no estimate"
        prev = self.previous
        if prev is None:
            return f"{count}, first build of this profile: no estimate"
        total = prev.steps
        if steps > total:
            return f"{count}, more than the {total:,} of the last full build: no estimate"
        share = steps / total
        if share >= _OWN_PACE_AFTER and steps > 0 and elapsed > 0:
            left = elapsed / steps * (total - steps)
        else:
            # More jobs, less time: the previous build's time scaled by -j.
            left = prev.seconds * prev.jobs / self.jobs * (1.0 - share)
        return (f"{steps:,}/{total:,} ({round(share * 100)} %), "
                f"about {format_duration(left)} left")
