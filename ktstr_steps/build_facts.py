"""What a build records beyond its cache key: requested vs effective config, output sizes.

The pipeline's phases call these after their own work, so the facts land in
the build state (and from there in the build result object and the records
row) without changing what a phase does. Symbols are Kconfig's names, without
the ``CONFIG_`` prefix; values as ``.config`` writes them, ``"n"`` for
``is not set`` and None for a symbol the final ``.config`` does not mention.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ktstr_steps import identity, kconfig
from ktstr_steps.messages import warn


def _bare(symbol: str) -> str:
    return symbol.removeprefix("CONFIG_")


def final_symbols(src: Path) -> dict[str, str] | None:
    """The set symbols of ``src/.config``, or None without one."""
    try:
        text = (Path(src) / ".config").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return identity.config_symbols(text)


def _effective(symbols: dict[str, str] | None, lines: dict[str, str], symbol: str) -> str | None:
    """The final value of ``symbol``: set, ``n`` when the .config says so, None when absent."""
    if symbols is not None and symbol in symbols:
        return symbols[symbol]
    return "n" if f"CONFIG_{symbol}" in lines else None


def _config_mentions(src: Path) -> dict[str, str]:
    """CONFIG_X -> its line, for every symbol the final .config mentions (set or not)."""
    out: dict[str, str] = {}
    try:
        text = (Path(src) / ".config").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        sym = kconfig.line_symbol(line.strip())
        if sym:
            out[sym] = line.strip()
    return out


def config_lists(
    src: Path,
    overrides: list[dict[str, Any]],
    dropped: list[dict[str, Any]],
    *,
    arch: str,
    cache_dir: Path | None,
    commit: str | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(config_overrides, config_dropped) from configure's override and dropped lists.

    An override is a fragment line that replaced a baked-in one: what was
    requested and what the final config holds. A dropped line says why, from
    the tree's own Kconfig (:mod:`ktstr_steps.kconfig_why`).
    """
    symbols = final_symbols(src)
    mentions = _config_mentions(src)
    out_over = []
    for o in overrides:
        sym = _bare(o["symbol"])
        now = o["now"]
        requested = now[1:] if now.startswith("=") else "n"
        out_over.append({"symbol": sym, "requested": requested,
                         "effective": _effective(symbols, mentions, sym)})
    out_drop = []
    for d in dropped:
        sym, requested = identity.line_value(d["line"])
        if sym is None:
            continue
        out_drop.append({"symbol": sym, "requested": requested,
                         "effective": _effective(symbols, mentions, sym), "reason": None})
    if out_drop:
        from ktstr_steps import kconfig_why

        reasons = kconfig_why.explain_dropped(
            src, [(d["symbol"], d["requested"]) for d in out_drop],
            arch=arch, cache_dir=cache_dir, commit=commit,
        )  # fmt: skip
        for d in out_drop:
            d["reason"] = reasons.get(d["symbol"])
    return out_over, out_drop


def format_reason(d: dict[str, Any]) -> str:
    """``SCHED_CLASS_EXT dropped: depends on DEBUG_INFO_BTF (=n)``."""
    return f"{d['symbol']} dropped: {d.get('reason') or 'dependency not evaluated'}"


def output_sizes(
    image: Path | None, vmlinux: Path | None, entry_vmlinux: Path | None, stripped: bool
) -> dict[str, int | None]:
    """bzImage size, vmlinux before stripping, and after (when the cache stripped it)."""
    return {
        "bzimage_bytes": identity.file_size(image),
        "vmlinux_bytes": identity.file_size(vmlinux),
        "vmlinux_stripped_bytes": identity.file_size(entry_vmlinux) if stripped else None,
    }


def record_outputs(state: Any, image: Path, vmlinux: Path, entry: Any | None) -> None:
    """Sizes and the final config's symbols into the state (entry: the cache entry or None)."""
    entry_vmlinux = entry.vmlinux_path if entry is not None else None
    stripped = bool(entry is not None and entry.metadata.vmlinux_stripped)
    sizes = output_sizes(image, vmlinux if vmlinux.is_file() else None, entry_vmlinux, stripped)
    state.bzimage_bytes = sizes["bzimage_bytes"]
    state.vmlinux_bytes = sizes["vmlinux_bytes"]
    state.vmlinux_stripped_bytes = sizes["vmlinux_stripped_bytes"]
    state.config_symbols = final_symbols(Path(state.source_dir))


def provenance(state: Any) -> dict[str, Any]:
    """What ktstr-ci keeps next to a cache entry (``ktstr-ci.json``, never metadata.json):
    the identity it was built from, so a later miss can say what differs."""
    return {"identity": state.identity, "cache_key": state.cache_key}


def safe_config_lists(state: Any, src: Path, cache_dir: Path | None) -> None:
    """:func:`config_lists` into the state; a failure only costs the lists, never the build."""
    # A release tarball's tree never changes under its version: that names its parse too.
    commit = state.git_hash or (f"v{state.version}" if state.kind == "tarball" and state.version
                                else None)
    try:
        state.config_overrides, state.config_dropped = config_lists(
            src, state.overrides, state.dropped, arch=state.arch, cache_dir=cache_dir,
            commit=commit,
        )  # fmt: skip
    except Exception as exc:  # the lists describe the build; they must never fail it
        warn(f"cannot list requested vs effective config: {exc}")
        return
    for d in state.config_dropped:
        state.warn(format_reason(d))
