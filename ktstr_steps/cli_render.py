"""What ``kernel list`` prints: the text table with its legends and footer, and the JSON.

ktstr's wording and order: data on stdout, the cache root and the legends on
stderr; informational legends first, the operational corrupt footer last. A
failed releases.json fetch disables the EOL tags and says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ktstr_steps.cache.entries import CorruptEntry, ListedEntry, entry_row, is_eol
from ktstr_steps.messages import LABEL

EOL_EXPLANATION = (
    "(EOL) marks entries whose major.minor series is absent from kernel.org's current "
    "active releases. Suppressed when the active-release list cannot be fetched."
)
UNTRACKED_EXPLANATION = (
    "(untracked kconfig) marks entries with no recorded ktstr.kconfig hash (pre-dates "
    "kconfig hash tracking). Rebuild with: kernel build --force VERSION (add "
    "--extra-kconfig PATH if the original entry was built with a user fragment)."
)
STALE_EXPLANATION = (
    "warning: entries marked (stale kconfig) were built against a different "
    "ktstr.kconfig. Rebuild with: kernel build --force <entry version> (add "
    "--extra-kconfig PATH if the entry was built with a user fragment)."
)


def corrupt_footer(count: int, root: Path) -> str:
    noun = "entry" if count == 1 else "entries"
    return (
        f"{count} corrupt {noun}. Run `{LABEL} kernel clean --corrupt-only` to remove.\n"
        "warning: entries marked (corrupt) cannot be used — cached metadata is missing, "
        "malformed, or references a missing image. Inspect the entry directory under "
        f"{root} to remove it manually, or run `kernel clean --corrupt-only --force` which "
        "removes ONLY corrupt entries and leaves valid ones intact. For broader cleanup, "
        "`kernel clean --force` removes ALL cached entries (valid and corrupt alike); "
        "`kernel clean --keep N --force` preserves the N newest cached entries while "
        "removing the rest."
    )



def render_list_text(
    entries: list[ListedEntry],
    root: Path | str,
    current_kconfig_hash: str | None,
    active_prefixes: set[str] | None,
    fetch_error: str | None,
) -> tuple[str, str]:
    """``kernel list`` text: (stdout, stderr) as ktstr prints them."""
    err: list[str] = []
    if fetch_error is not None:
        err.append(
            f"kernel list: failed to fetch active kernel series ({fetch_error}); EOL "
            "annotation disabled for this run. Check that kernel.org (or the configured "
            "releases mirror) is reachable from this host."
        )
        active_prefixes = None
    err.append(f"cache: {root}")
    if not entries:
        out = "no cached kernels. Run `kernel build` to download and build a kernel.\n"
        return out, "\n".join(err) + "\n"
    lines = [f"  {'KEY':<48} {'VERSION':<12} {'SOURCE':<8} {'ARCH':<7} BUILT"]
    any_eol = any_untracked = any_stale = False
    corrupt = 0
    for e in entries:
        lines.append(entry_row(e, current_kconfig_hash, active_prefixes))
        if isinstance(e, CorruptEntry):
            corrupt += 1
            continue
        status = e.kconfig_status(current_kconfig_hash)
        any_stale |= status == "stale"
        any_untracked |= status == "untracked"
        any_eol |= is_eol(e, active_prefixes)
    # Fixed order: informational legends first, the operational corrupt footer last.
    if any_eol:
        err.append(EOL_EXPLANATION)
    if any_untracked:
        err.append(UNTRACKED_EXPLANATION)
    if any_stale:
        err.append(STALE_EXPLANATION)
    if corrupt:
        err.append(corrupt_footer(corrupt, Path(root)))
    return "\n".join(lines) + "\n", "\n".join(err) + "\n"


def entry_json(
    e: ListedEntry, current_kconfig_hash: str | None, active_prefixes: set[str] | None
) -> dict[str, Any]:
    if isinstance(e, CorruptEntry):
        return {"key": e.key, "path": str(e.path), "error": e.reason, "error_kind": e.error_kind}
    m = e.metadata
    return {
        "key": e.key,
        "path": str(e.path),
        "version": m.version,
        "source": m.source.to_json(),
        "arch": m.arch,
        "built_at": m.built_at,
        "ktstr_kconfig_hash": m.ktstr_kconfig_hash,
        "extra_kconfig_hash": m.extra_kconfig_hash,
        "kconfig_status": e.kconfig_status(current_kconfig_hash),
        "eol": is_eol(e, active_prefixes),
        "config_hash": m.config_hash,
        "image_name": m.image_name,
        "image_path": str(e.image_path),
        "has_vmlinux": m.has_vmlinux,
        "vmlinux_stripped": m.vmlinux_stripped,
    }


def list_json(
    entries: list[ListedEntry],
    current_kconfig_hash: str | None,
    active_prefixes: set[str] | None,
    fetch_error: str | None,
) -> dict[str, Any]:
    """``kernel list --json``. A fetch error disables EOL tagging."""
    if fetch_error is not None:
        active_prefixes = None
    return {
        "current_ktstr_kconfig_hash": current_kconfig_hash,
        "active_prefixes_fetch_error": fetch_error,
        "entries": [entry_json(e, current_kconfig_hash, active_prefixes) for e in entries],
    }

