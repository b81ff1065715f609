"""The worker's connection to the master: a holder's build lives exactly as long as it.

Buildbot never resumes a build over a new connection. When the master dies
or restarts, or the worker's connection drops, the master ends the build
(RETRY) and runs none of its remaining steps — the release step included —
and after a restart it retries the request as a new build. A reservation
tied only to the worker process would then be held by nobody's build and
wedge the retry on the source lock.

So the reserve step tells the holder which connection carries its build:
the worker-side address of the master's peer (``host:port`` of the worker's
TCP socket). The holder finds that socket among its owner's connections and
releases, after killing the build's processes, as soon as it is gone. A
connection the holder cannot see (NAT between worker and master, or a
protocol without TCP) falls back to following the owner process only.
"""

from __future__ import annotations

import psutil

from ktstr_steps.errors import KtstrError


def parse_link(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6host]:port`` → ``(host, port)``; a clear error otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise KtstrError(
            f"--master-link {text!r}: expected HOST:PORT of the worker's connection to the "
            "master (as the master sees its peer)",
            kind="invalid-argument",
        )
    return _norm(host), int(port)


def _norm(host: str) -> str:
    # An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d on one side only.
    return host[7:] if host.startswith("::ffff:") else host


def connected(owner_pid: int, link: tuple[str, int]) -> bool | None:
    """Whether ``owner_pid`` has an ESTABLISHED TCP socket whose local end is ``link``.

    None when the owner's sockets cannot be read at all (gone, or not ours).
    """
    try:
        conns = psutil.Process(owner_pid).net_connections(kind="tcp")
    except psutil.Error:
        return None
    for c in conns:
        if c.status == psutil.CONN_ESTABLISHED and c.laddr and (
            (_norm(c.laddr.ip), c.laddr.port) == link
        ):
            return True
    return False
