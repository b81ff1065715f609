"""The error a user can act on, and its contention flavour; every command reports it the same way.

A :class:`KtstrError` becomes ``ktstr-ci: error: <message>`` and exit status 1
on the command line, and ``{"kind": ..., "message": ...}`` in ``errors[]`` of
a ``--json`` answer. Its ``kind`` is one of the registered error kinds of
:mod:`ktstr_steps.results`.
"""

from __future__ import annotations


class KtstrError(Exception):
    """An error the user can act on: the message says what went wrong and how to fix it.

    ``kind`` is a short machine-readable tag that lands in ``--json`` output
    (``errors[].kind``) so steps and tests need not parse prose.
    """

    def __init__(self, message: str, *, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


class ResourceContention(KtstrError):
    """LLC / lock contention: the same condition ktstr reports as ResourceContention."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="resource-contention")


def os_error_text(exc: OSError) -> str:
    """An OS error as ktstr prints one (Rust's ``io::Error``): ``<strerror> (os error N)``."""
    if exc.errno:
        return f"{exc.strerror} (os error {exc.errno})"
    return str(exc)
