"""The holder process: one process that owns a build's reservation across many commands.

Buildbot runs each build phase as its own command, but the LLC flocks, the
cgroup sandbox and the source-tree lock must live from the reserve step to the
release step. ``holder acquire`` starts this process detached (own session,
stdio to ``<run>/holders/NAME.log``); it performs the reservation FOR ITSELF —
the flocks are its open file descriptions, the sandbox is created around its
own pid — writes its state file and reports ready over a pipe. Requests
arrive on its unix socket:

- ``lock-source`` takes the source-tree lock in THIS process, so the lock
  outlives the command that asked;
- ``join`` hands a phase command copies of the lock descriptors (the command
  then joins the cgroup; see :class:`~ktstr_steps.holder.client.ReservationGuard`);
- ``release`` ends the build: every process of the build is killed, then the
  source lock, the sandbox and the LLC locks are released, in that order.

The same release happens on its own, within about a second, when the owner
process dies (default owner: the parent of ``acquire``, i.e. the
buildbot-worker), when the worker's connection to the master that carries
the build closes (``--master-link``), when ``--max-lifetime`` passes, or on
SIGTERM/SIGINT/SIGHUP. ``kill -9`` of the holder itself drops its own flock
descriptors; the phase command that runs the build keeps its copies until it
has killed the build's processes, and whatever is left is ended by the
release step or the next ``acquire`` (stale sweep).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ktstr_steps.buildprocs import describe, kill_build, marker
from ktstr_steps.errors import KtstrError
from ktstr_steps.holder import link as link_mod
from ktstr_steps.holder.state import (
    holders_dir,
    log_path,
    read_state,
    sock_addr,
    sock_name,
    state_path,
    write_json_atomic,
)
from ktstr_steps.liveness import create_time, pid_alive
from ktstr_steps.messages import LABEL, say, warn

POLL = 0.5  # owner / lifetime check interval: "releases within seconds"
LINK_POLL = 1.0  # the master connection is read from /proc: a little less often


class _Stop(BaseException):
    """Raised in the main thread by a signal while the reservation is being taken."""


class _ThreadRelay(io.TextIOBase):
    """sys.stderr in the holder: always the log, plus a per-thread sink (a client or the pipe).

    The library prints its diagnostics (LLC waiting, the source-lock holder
    list) to sys.stderr; routing by thread sends each to the command that
    is waiting for that operation.
    """

    def __init__(self, base: Any) -> None:
        self.base = base
        self.sinks: dict[int, Callable[[str], None]] = {}

    def write(self, s: str) -> int:
        self.base.write(s)
        self.base.flush()
        sink = self.sinks.get(threading.get_ident())
        if sink is not None:
            with contextlib.suppress(Exception):
                sink(s)
        return len(s)

    def flush(self) -> None:
        self.base.flush()

    def isatty(self) -> bool:
        return False

    @contextlib.contextmanager
    def sink(self, fn: Callable[[str], None]) -> Iterator[None]:
        self.sinks[threading.get_ident()] = fn
        try:
            yield
        finally:
            self.sinks.pop(threading.get_ident(), None)


class Holder:
    def __init__(self, args: argparse.Namespace, relay: _ThreadRelay) -> None:
        self.name: str = args.name
        self.args = args
        self.relay = relay
        self.res: Any = None
        self.tree_lock: Any = None
        self.source: str | None = None
        self.stop = threading.Event()
        self.reason = "released"
        self.ready = False
        self.interruptible = True  # signals raise _Stop only during acquisition, and once
        self.lock = threading.RLock()
        self.released: list[str] | None = None
        self.deadline = (time.monotonic() + args.max_lifetime) if args.max_lifetime else None
        self.server: socket.socket | None = None
        self.started = time.time()
        self.tag = marker(self.name, os.getpid())
        self.link: tuple[str, int] | None = None

    # -- lifecycle --

    def on_signal(self, signum: int, _frame: object) -> None:
        self.request_stop(f"signal {signal.Signals(signum).name}")
        if self.interruptible and not self.ready:
            self.interruptible = False
            raise _Stop(self.reason)

    def request_stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.reason = reason
            self.stop.set()

    def monitor(self) -> None:
        owner, ctime = self.args.owner_pid, self.args.owner_ctime
        next_link = 0.0
        while not self.stop.is_set():
            why = None
            if not pid_alive(owner, ctime):
                why = f"owner pid {owner} exited"
            elif self.deadline is not None and time.monotonic() >= self.deadline:
                why = f"max lifetime {self.args.max_lifetime:g}s passed"
            elif self.link is not None and time.monotonic() >= next_link:
                next_link = time.monotonic() + LINK_POLL
                if link_mod.connected(owner, self.link) is False:
                    why = (f"the worker's connection to the master ({self.args.master_link}) "
                           "closed: the master no longer runs this build")
            if why:
                if self.ready:
                    self.request_stop(why)
                else:
                    # still acquiring in the main thread: interrupt it like SIGTERM would
                    self.request_stop(why)
                    os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(POLL)

    def watch_link(self) -> None:
        """Follow ``--master-link`` if that connection is visible among the owner's sockets."""
        if not self.args.master_link:
            return
        link = link_mod.parse_link(self.args.master_link)
        if link_mod.connected(self.args.owner_pid, link):
            self.link = link
            say(f"holder {self.name}: following the worker's connection {self.args.master_link}")
        else:
            warn(f"holder {self.name}: the worker's connection {self.args.master_link} is not "
                 f"among pid {self.args.owner_pid}'s sockets (NAT, or another protocol); the "
                 "reservation follows the worker process only")

    def state(self) -> dict:
        from ktstr_steps.reservation import plan_json

        res = self.res
        return {
            "name": self.name,
            "pid": os.getpid(),
            "pid_create_time": create_time(os.getpid()),
            "bypass": bool(res and res.bypass),
            "plan": plan_json(res.plan, res.make_jobs) if res is not None and res.plan is not None else None,
            "sandbox": res.sandbox.to_json() if res is not None and res.sandbox is not None
            else {"kind": "none", "path": None},
            "make_jobs": res.make_jobs if res is not None else None,
            "owner_pid": self.args.owner_pid,
            "max_lifetime": self.args.max_lifetime,
            "started_at": self.started,
            "source_lock": {"source": self.source, "lockfile": str(self.tree_lock.path)}
            if self.tree_lock is not None else None,
            "log": str(log_path(self.name)),
            "master_link": self.args.master_link if self.link is not None else None,
            "tag": self.tag,
            "socket": str(holders_dir() / sock_name(self.name)),
        }

    def write_state(self) -> None:
        write_json_atomic(state_path(self.name), self.state())

    def release_all(self) -> list[str]:
        """Kill the build's processes, then source lock → sandbox → LLC locks (ktstr's order).

        Each release runs even if an earlier one fails. Killing comes first and
        is waited for: a make that outlived the source lock could share the
        tree with the next build's make, and one that outlived the LLC locks
        could run on CPUs a perf-mode run has just taken.
        """
        with self.lock:
            if self.released is not None:
                return self.released
            out: list[str] = []
            res = self.res
            sb = res.sandbox if res is not None else None
            cg = sb.path if sb is not None and sb.active else None
            killed, survivors = kill_build(cg, self.tag)
            if killed:
                out.append("processes")
                say(f"holder {self.name}: killed the build's processes ({self.reason}): "
                    f"{describe(killed)}")
            if survivors:
                warn(f"holder {self.name}: processes {survivors} survive SIGKILL "
                     "(uninterruptible sleep?); releasing anyway")
            src, self.tree_lock = self.tree_lock, None
            try:
                if src is not None:
                    src.release()
                    out.append("source-lock")
            finally:
                if res is not None:
                    if sb is not None and sb.kind != "none":
                        out.append("sandbox")
                    if res.plan is not None:
                        out.append("llc-locks")
                    res.release(self.tag)  # sandbox teardown, then the flocks
            self.released = out
            say(f"holder {self.name}: released {', '.join(out) or 'nothing'} ({self.reason})")
            return out

    def run(self, ready_fd: int) -> int:
        from ktstr_steps.reservation import acquire_build_reservation

        pipe = os.fdopen(ready_fd, "w", encoding="utf-8")

        def to_pipe(obj: dict) -> None:
            pipe.write(json.dumps(obj) + "\n")
            pipe.flush()

        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, self.on_signal)
        threading.Thread(target=self.monitor, name="owner-monitor", daemon=True).start()
        rc = 0
        try:
            try:
                with self.relay.sink(lambda text: to_pipe({"stderr": text})):
                    say(f"holder {self.name}: pid {os.getpid()}, owner pid {self.args.owner_pid}")
                    self.res = acquire_build_reservation(
                        self.args.cpu_cap, wait=self.args.wait,
                        lock_dir=Path(self.args.lock_dir), pid=os.getpid(),
                    )
                    self.watch_link()
                    self.serve_socket()
                    self.write_state()
                self.ready = True
                to_pipe({"ready": self.state()})
            except _Stop:
                rc = 1
                msg = f"holder {self.name}: interrupted while acquiring ({self.reason}); nothing held"
                with contextlib.suppress(OSError):
                    to_pipe({"error": msg, "kind": "interrupted"})
                return rc
            except KtstrError as exc:
                with contextlib.suppress(OSError):
                    to_pipe({"error": str(exc), "kind": exc.kind})
                return 1
            finally:
                self.ready = True  # from here on a signal only requests a stop
                with contextlib.suppress(OSError):
                    pipe.close()
            while not self.stop.wait(POLL):
                pass
            return rc
        finally:
            self.ready = True
            try:
                self.release_all()
            finally:
                self.close_socket()
                with contextlib.suppress(OSError):
                    st = read_state(self.name)
                    if st is not None and st.get("pid") == os.getpid():
                        state_path(self.name).unlink()

    # -- socket --

    def serve_socket(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with sock_addr(self.name) as addr:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(addr)  # a stale socket of a dead namesake
            sock.bind(addr)
        sock.listen(8)
        self.server = sock
        threading.Thread(target=self._accept, name="holder-socket", daemon=True).start()

    def close_socket(self) -> None:
        if self.server is not None:
            with contextlib.suppress(OSError):
                self.server.close()
            with contextlib.suppress(OSError):
                (holders_dir() / sock_name(self.name)).unlink()

    def _accept(self) -> None:
        assert self.server is not None
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            f = conn.makefile("rw", encoding="utf-8")

            def send(obj: dict) -> None:
                f.write(json.dumps(obj) + "\n")
                f.flush()

            try:
                req = json.loads(f.readline() or "{}")
                op = req.get("op")
                if op == "status":
                    send({"ok": True, "state": self.state()})
                elif op == "release":
                    self.request_stop("release requested")
                    send({"ok": True, "released": self.release_all()})
                elif op == "lock-source":
                    send(self._lock_source(req, lambda t: send({"event": "stderr", "text": t})))
                elif op == "join":
                    self._join(conn)
                else:
                    send({"ok": False, "error": f"unknown request {op!r}", "kind": "holder-error"})
            except (OSError, ValueError):
                return  # the client went away; nothing to answer

    def _join(self, conn: socket.socket) -> None:
        """Hand the joining command duplicates of our flock descriptors (source lock first)."""
        with self.lock:
            if self.stop.is_set() or self.released is not None:
                conn.sendall((json.dumps({"ok": False, "kind": "reservation-lost",
                                          "error": f"holder {self.name} is releasing "
                                                   f"({self.reason})"}) + "\n").encode())
                return
            src = [self.tree_lock.fd] if self.tree_lock is not None and self.tree_lock.fd is not None else []
            plan = self.res.plan if self.res is not None else None
            llc = [lk.fd for lk in (plan.locks if plan is not None else []) if lk.fd is not None]
            msg = json.dumps({"ok": True, "fds": {"source": len(src), "llc": len(llc)}}) + "\n"
            socket.send_fds(conn, [msg.encode()], src + llc)

    def _lock_source(self, req: dict, emit: Callable[[str], None]) -> dict:
        from ktstr_steps import cache
        from ktstr_steps.planner import bypass_llc_locks
        from ktstr_steps.tree_lock import acquire_source_tree_lock

        with self.lock:
            if self.stop.is_set() or self.released is not None:
                return {"ok": False, "error": f"holder {self.name} is releasing", "kind": "holder-error"}
            if self.tree_lock is not None:
                if self.source == req.get("source"):
                    return {"ok": True, "lock": {"lockfile": str(self.tree_lock.path), "waited_seconds": 0.0,
                                                 "holders_seen": []}}
                return {"ok": False, "kind": "holder-error",
                        "error": f"holder {self.name} already holds the source lock of {self.source}"}
        if (self.res is not None and self.res.bypass) or bypass_llc_locks():
            # ktstr takes no source-tree lock under KTSTR_BYPASS_LLC_LOCKS
            return {"ok": True, "lock": {"lockfile": None, "waited_seconds": 0.0, "holders_seen": []}}
        try:
            with self.relay.sink(emit):
                lk = acquire_source_tree_lock(req["source"], cache.cache_root(), wait=req.get("wait"))
        except KtstrError as exc:
            return {"ok": False, "error": str(exc), "kind": exc.kind}
        with self.lock:
            if self.stop.is_set() or self.released is not None:
                lk.release()  # release raced the wait: do not hold past our own release
                return {"ok": False, "error": f"holder {self.name} was released while waiting",
                        "kind": "holder-error"}
            self.tree_lock, self.source = lk, req["source"]
            self.write_state()
        return {"ok": True, "lock": lk.to_json()}


def _serve_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=f"{LABEL}-holder")
    ap.add_argument("--name", required=True)
    ap.add_argument("--ready-fd", type=int, required=True)
    ap.add_argument("--cpu-cap", type=int)
    ap.add_argument("--wait", type=float, default=0.0)
    ap.add_argument("--owner-pid", type=int, required=True)
    ap.add_argument("--owner-ctime", type=float)
    ap.add_argument("--max-lifetime", type=float)
    ap.add_argument("--lock-dir", default="/tmp")
    ap.add_argument("--master-link")
    args = ap.parse_args(argv)
    relay = _ThreadRelay(sys.stderr)
    sys.stderr = relay
    return Holder(args, relay).run(args.ready_fd)


if __name__ == "__main__":
    sys.exit(_serve_main())
