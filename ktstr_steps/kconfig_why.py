"""Why a requested config option was dropped, from the tree's own Kconfig files.

kconfiglib (PyPI, 14.1.0) parses the tree's Kconfig and, after loading the
final ``.config``, evaluates each dropped symbol's dependencies against it:
``depends on DEBUG_INFO_BTF (=n)`` names the term that kept the option out,
with its value in the final config.

kconfiglib 14.1.0 predates Linux 5.13's bare ``modules`` attribute
(``kernel/module/Kconfig``) and stops there; it reads that one line as the
older spelling ``option modules``, which means the same. The rewrite happens
on the text as kconfiglib reads it: the build tree is never touched.

A parse takes seconds on a full tree, so the parsed tree is pickled per tree
and commit (``<cache_dir>/kconfig-parse/``) and loaded from there next time.
A tree kconfiglib cannot parse answers ``dependency not evaluated: <where the
parse failed>`` for every symbol instead of failing the build.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import kconfiglib

from ktstr_steps.messages import warn

PARSE_DIR = "kconfig-parse"
# Parses kept (newest first): each is ~10 MB for a full tree and the run dir may be tmpfs.
KEEP_PARSES = 4
_BARE_MODULES = re.compile(r"^(\t+)modules[ \t]*$", re.M)
_SRCARCH = {"x86_64": "x86", "aarch64": "arm64"}
# What the kernel's Makefile exports for Kconfig; $(shell,...) calls in Kconfig.include
# test these tools.
_KCONFIG_ENV = {"CC": "gcc", "LD": "ld", "HOSTCC": "gcc", "HOSTCXX": "g++", "RUSTC": "rustc",
                "BINDGEN": "bindgen", "CC_VERSION_TEXT": ""}
# The parsed tree is a deep linked structure; pickling walks it recursively, deeper
# than Python's default limit and than the C stack of the main thread allows.
_RECURSION = 100_000
_PICKLE_STACK = 512 * 1024 * 1024


class NotEvaluated(Exception):
    """The tree's Kconfig could not be read; the message says where."""


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class TreeKconfig(kconfiglib.Kconfig):
    """Reads ``modules`` (Linux >= 5.13) as ``option modules``, in memory."""

    def _open(self, filename: str, mode: str) -> Any:
        if mode != "r":
            return super()._open(filename, mode)
        with open(filename, encoding="utf-8", errors="surrogateescape") as f:
            return io.StringIO(_BARE_MODULES.sub(r"\1option modules", f.read()))


def parse_tree(src: Path, arch: str) -> Any:
    """The tree's Kconfig, parsed; :class:`NotEvaluated` says where it could not be."""
    env = {**_KCONFIG_ENV, "srctree": str(src), "ARCH": arch,
           "SRCARCH": _SRCARCH.get(arch, arch), "KERNELVERSION": "unknown"}
    try:
        with _environ(env), open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            kconf = TreeKconfig("Kconfig", warn=False)
    except (kconfiglib.KconfigError, OSError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()
        raise NotEvaluated(first[0] if first else type(exc).__name__) from exc
    kconf._readline = None  # a closed file's method: not picklable, not needed after parsing
    return kconf


def _on_big_stack(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a thread with a stack deep enough to pickle a parsed tree."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller's thread
            out["error"] = exc

    old = threading.stack_size(_PICKLE_STACK)
    try:
        worker = threading.Thread(target=run, name="kconfig-pickle")
        worker.start()
    finally:
        threading.stack_size(old)
    worker.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _read_pickle(path: Path) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)


def _write_pickle(path: Path, kconf: Any) -> None:
    with open(path, "wb") as f:
        pickle.dump(kconf, f, protocol=pickle.HIGHEST_PROTOCOL)


def _pickle_path(cache_dir: Path, src: Path, commit: str | None, arch: str) -> Path:
    tag = hashlib.sha256(f"{Path(src).resolve()}\0{commit}\0{arch}".encode()).hexdigest()[:16]
    return Path(cache_dir) / PARSE_DIR / f"{tag}.pickle"


def load_tree(src: Path, arch: str, *, cache_dir: Path | None, commit: str | None) -> Any:
    """:func:`parse_tree`, from the per tree+commit pickle when there is one.

    Without a commit (a tree git cannot vouch for) nothing is cached: its
    Kconfig files may change without the key changing.
    """
    path = _pickle_path(cache_dir, src, commit, arch) if cache_dir and commit else None
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, _RECURSION))
    try:
        if path is not None and path.is_file():
            try:
                return _on_big_stack(_read_pickle, path)
            except Exception as exc:  # a stale or torn pickle is parsed again
                warn(f"kconfig parse cache {path} unreadable ({exc}); parsing again")
        kconf = parse_tree(src, arch)
        if path is not None:
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                _on_big_stack(_write_pickle, tmp, kconf)
                os.replace(tmp, path)
                _prune(path.parent)
            except (OSError, pickle.PicklingError, RecursionError) as exc:
                tmp.unlink(missing_ok=True)
                warn(f"cannot cache the kconfig parse in {path}: {exc}")
        return kconf
    finally:
        sys.setrecursionlimit(old)


def _prune(directory: Path) -> None:
    try:
        found = sorted(directory.glob("*.pickle"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in found[KEEP_PARSES:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # another build pruned first


# -- the reasons ---------------------------------------------------------------

_TRI = {0: "n", 1: "m", 2: "y"}


def _value_text(kconf: Any, item: Any) -> str:
    if isinstance(item, kconfiglib.Symbol):
        if item.orig_type in (kconfiglib.BOOL, kconfiglib.TRISTATE):
            return _TRI[item.tri_value]
        return item.str_value
    return _TRI[kconfiglib.expr_value(item)]


def _term_text(term: Any) -> str:
    text = kconfiglib.expr_str(term)
    return text if isinstance(term, kconfiglib.Symbol) else f"({text})"


def _failing_terms(kconf: Any, expr: Any, need: int) -> list[str]:
    """The AND-terms of ``expr`` below ``need``, each as ``TERM (=value)``."""
    out = []
    for term in kconfiglib.split_expr(expr, kconfiglib.AND):
        if kconfiglib.expr_value(term) < need:
            out.append(f"{_term_text(term)} (={_value_text(kconf, term)})")
    return out


def _requested_level(value: str | None) -> int:
    return {"y": 2, "m": 1, "n": 0}.get(value or "", 2)


def reason_for(kconf: Any, symbol: str, requested: str | None) -> str:
    """Why ``symbol`` did not take ``requested`` in the loaded config."""
    sym = kconf.syms.get(symbol)
    if sym is None or not sym.nodes:
        return "not defined in this tree's Kconfig"
    if sym.orig_type not in (kconfiglib.BOOL, kconfiglib.TRISTATE):
        if not any(n.prompt for n in sym.nodes):
            return "has no prompt: its value comes from its default"
        failing = _failing_terms(kconf, sym.direct_dep, 1)
        if failing:
            return "depends on " + " && ".join(failing)
        return f"value {requested!r} not accepted (effective {sym.str_value!r})"
    need = _requested_level(requested)
    if need == 0:
        if kconfiglib.expr_value(sym.rev_dep):
            terms = [t for t in kconfiglib.split_expr(sym.rev_dep, kconfiglib.OR)
                     if kconfiglib.expr_value(t)]
            return "selected by " + " || ".join(
                f"{_term_text(t)} (={_value_text(kconf, t)})" for t in terms)
        if not any(n.prompt for n in sym.nodes):
            return "has no prompt: its default applies"
        return "kept by its default"
    if need == 1 and kconf.modules.tri_value == 0:
        return f"depends on {kconf.modules.name} (=n)"
    failing = _failing_terms(kconf, sym.direct_dep, need)
    if failing:
        return "depends on " + " && ".join(failing)
    prompts = [n for n in sym.nodes if n.prompt]
    if not prompts:
        return "has no prompt: only set when selected by another option"
    hidden = [t for n in prompts for t in _failing_terms(kconf, n.prompt[1], need)]
    if hidden:
        return "prompt hidden: " + " && ".join(hidden)
    if sym.choice is not None:
        return f"another option of its choice is selected ({sym.choice.selection.name if sym.choice.selection else 'none'})"
    return f"limited to {_TRI[sym.tri_value]} by its dependencies"


def explain_dropped(
    src: Path,
    dropped: Iterable[tuple[str, str | None]],
    *,
    arch: str,
    cache_dir: Path | None = None,
    commit: str | None = None,
) -> dict[str, str]:
    """symbol -> why it was dropped, for each (symbol, requested value) of ``dropped``,
    evaluated against ``src/.config``; ``dependency not evaluated: ...`` when the tree's
    Kconfig cannot be read."""
    dropped = list(dropped)
    try:
        kconf = load_tree(Path(src), arch, cache_dir=cache_dir, commit=commit)
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            kconf.load_config(str(Path(src) / ".config"))
    except NotEvaluated as exc:
        return {sym: f"dependency not evaluated: {exc}" for sym, _ in dropped}
    except Exception as exc:  # the reason is a description; never fail the build for it
        return {sym: f"dependency not evaluated: {exc}" for sym, _ in dropped}
    return {sym: reason_for(kconf, sym, req) for sym, req in dropped}
