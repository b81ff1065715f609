"""Where the kernel cache is: ktstr's root rule, the one definition every ktstr-ci part uses.

``KTSTR_CACHE_DIR`` verbatim, else ``$XDG_CACHE_HOME/ktstr/kernels``, else
``$HOME/.cache/ktstr/kernels``; a value ktstr would refuse (non-UTF-8, an
empty, relative or ``/`` HOME) is refused here with ktstr's message, so CI
stores exactly where ktstr reads. Layout under the root::

    <key>/{bzImage|Image, vmlinux, metadata.json, ktstr-ci.json}
    .locks/<key>.lock          per-entry flock (EX: store, SH: ktstr test VMs)
    .locks/source-<crc>.lock   the source-tree locks (ktstr_steps.tree_lock)
    .tmp-<key>-<pid>/          a store in progress
"""

from __future__ import annotations

import os
from pathlib import Path

from ktstr_steps.errors import KtstrError

LOCK_DIR = ".locks"
TMP_PREFIX = ".tmp-"


def _env_text(name: str) -> str | None:
    """The variable as text, or None if unset. Non-UTF-8 values keep their surrogates."""
    return os.environ.get(name)


def is_utf8(text: str) -> bool:
    """Whether ``text`` (an OS string, surrogate-escaped) is valid UTF-8, as ktstr requires."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def cache_root() -> Path:
    """ktstr's root resolution. Does not create anything."""
    explicit = _env_text("KTSTR_CACHE_DIR")
    if explicit:
        if not is_utf8(explicit):
            raw = os.fsencode(explicit)
            raise KtstrError(
                f"KTSTR_CACHE_DIR contains non-UTF-8 bytes ({len(raw)} bytes): {raw!r}. "
                "ktstr requires a UTF-8 cache path — set KTSTR_CACHE_DIR to an ASCII/UTF-8 "
                "directory (e.g. `/tmp/ktstr-cache`) or unset it to fall back to "
                "$XDG_CACHE_HOME/$HOME.",
                kind="cache-root",
            )
        return Path(explicit)
    xdg = _env_text("XDG_CACHE_HOME")
    # ktstr reads XDG_CACHE_HOME with env::var, so a non-UTF-8 value counts as unset.
    if xdg and is_utf8(xdg):
        return Path(xdg) / "ktstr" / "kernels"
    home = _env_text("HOME")
    hint = (
        "set KTSTR_CACHE_DIR to an absolute path (e.g. /tmp/ktstr-cache) or "
        "XDG_CACHE_HOME to specify a cache location explicitly."
    )
    if home is None:
        raise KtstrError(
            "HOME is unset; cannot resolve cache directory. The container init or login "
            f"shell did not assign HOME — set it to an absolute path, or {hint}",
            kind="cache-root",
        )
    if home == "":
        raise KtstrError(
            "HOME is set to the empty string; cannot resolve cache directory. An empty HOME "
            "usually means a Dockerfile or shell rc has `export HOME=` or `ENV HOME=` with "
            f"no value. Either set HOME to a real absolute path, or {hint}",
            kind="cache-root",
        )
    if not is_utf8(home):
        raise KtstrError(
            f"HOME contains non-UTF-8 bytes ({os.fsencode(home)!r}); cannot resolve cache "
            f"directory. Set HOME to a UTF-8 absolute path, or {hint}",
            kind="cache-root",
        )
    if home == "/":
        raise KtstrError(
            "HOME is `/`; the resulting cache path /.cache/ktstr would alias the root "
            "filesystem rather than naming a user cache. This usually means the process "
            "inherited HOME from a container init or root login that did not set a real "
            "home. Set KTSTR_CACHE_DIR to an absolute path (e.g. /tmp/ktstr-cache) or "
            "XDG_CACHE_HOME to bypass HOME entirely.",
            kind="cache-root",
        )
    if not home.startswith("/"):
        raise KtstrError(
            f"HOME={home!r} is not an absolute path; ktstr requires HOME to start with `/` "
            "so the cache root resolves consistently regardless of the current working "
            "directory. Set HOME to an absolute path, or set KTSTR_CACHE_DIR / "
            "XDG_CACHE_HOME to a specific cache location.",
            kind="cache-root",
        )
    return Path(home) / ".cache" / "ktstr" / "kernels"


def resolve(root: Path | str | None) -> Path:
    """``root`` when given (tests, the dashboard), else :func:`cache_root`."""
    return Path(root) if root is not None else cache_root()


def lock_path(key: str, root: Path | str | None = None) -> Path:
    """``<root>/.locks/<key>.lock``: the entry's flock (exclusive: a store; shared: test VMs)."""
    return resolve(root) / LOCK_DIR / f"{key}.lock"

