"""The worker-side holder: one process that owns a build's reservation across many commands.

Buildbot runs each build phase as its own command, but the LLC flocks, the
cgroup sandbox and the source-tree lock must live from the reserve step to the
release step. ``holder acquire`` starts a detached holder process (own session,
stdio to ``<run>/holders/NAME.log``) that performs the reservation FOR ITSELF —
the flocks are its open file descriptions, the sandbox is created around its
own pid — writes its state to ``<run>/holders/NAME.json`` and then reports
ready over a pipe. Other commands find it by name:

- ``lock-source`` asks it (unix socket ``<run>/holders/<crc32(NAME)>.sock``)
  to take the source-tree lock in ITS process, so the lock outlives the command;
- ``run``/:func:`join_holder` put the calling process into its cgroup and CPU
  affinity (make and gcc then inherit both by fork);
- ``release`` makes it release, in ktstr's order (§1.4): source lock → sandbox
  → LLC locks, and exit.

It also releases on its own, within about a second, when its owner process
dies (default owner: the parent of ``acquire``, i.e. the buildbot-worker),
when ``--max-lifetime`` passes, or on SIGTERM/SIGINT/SIGHUP. ``kill -9`` of the
holder itself drops its flocks with its descriptors; its cgroup and state file
are then swept by the next ``acquire`` (stale sweep).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from ktstr_steps.util import LABEL, KtstrError, crc32_hex, format_cpulist, say, warn

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,100}")
POLL = 0.5  # owner / lifetime check interval: "releases within seconds"
READY_TIMEOUT_GRACE = 60.0  # beyond --wait: time for sysfs, cgroup writes and startup


# ----------------------------------------------------------------- locations


def run_dir() -> Path:
    """``$KTSTR_CI_RUN_DIR``, else ``/run/ktstr-ci``, else ``/tmp/ktstr-ci-run`` (contracts.md)."""
    env = os.environ.get("KTSTR_CI_RUN_DIR")
    if env:
        return Path(env)
    if os.access("/run", os.W_OK):
        return Path("/run/ktstr-ci")
    return Path("/tmp/ktstr-ci-run")


def holders_dir(create: bool = False) -> Path:
    d = run_dir() / "holders"
    if create:
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError as exc:
            raise KtstrError(
                f"cannot create holder directory {d}: {exc.strerror}. Set KTSTR_CI_RUN_DIR to a "
                "writable local directory.",
                kind="holder-error",
            ) from exc
    return d


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise KtstrError(
            f"invalid holder name {name!r}: use 1-100 characters from A-Z a-z 0-9 _ . -",
            kind="invalid-holder-name",
        )
    return name


def state_path(name: str) -> Path:
    return holders_dir() / f"{check_name(name)}.json"


def log_path(name: str) -> Path:
    return holders_dir() / f"{check_name(name)}.log"


def _sock_name(name: str) -> str:
    # A hash, not the name: sun_path is 108 bytes and names may be 100 chars.
    return f"{crc32_hex(name.encode())}.sock"


@contextlib.contextmanager
def _sock_addr(name: str) -> Iterator[str]:
    """A short address for the socket under a possibly long run dir (via /proc/self/fd)."""
    fd = os.open(holders_dir(), os.O_PATH | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{_sock_name(name)}"
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)  # readers never see a half-written state


def pid_alive(pid: int | None, create_time: float | None = None) -> bool:
    """Alive and not a zombie; with ``create_time``, also not a recycled pid."""
    if not pid:
        return False
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        if create_time is not None and abs(p.create_time() - create_time) > 0.05:
            return False
        return True
    except (psutil.NoSuchProcess, ProcessLookupError):
        return False
    except psutil.Error:
        return True  # exists but not inspectable (another user): assume alive


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def read_state(name: str) -> dict | None:
    try:
        return json.loads(state_path(name).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise KtstrError(f"holder state {state_path(name)} is unreadable: {exc}", kind="holder-error") from exc


def _public(state: dict) -> dict:
    out = dict(state)
    out["alive"] = pid_alive(state.get("pid"), state.get("pid_create_time"))
    return out


# ----------------------------------------------------------------- stale sweep


def _forget(name: str) -> None:
    for p in (state_path(name), holders_dir() / _sock_name(name)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def sweep_stale() -> list[str]:
    """Forget holders whose process is gone: their flocks died with them; remove their cgroup."""
    from ktstr_steps.sandbox import remove_stale_sandbox

    swept: list[str] = []
    d = holders_dir()
    if not d.is_dir():
        return swept
    for f in sorted(d.glob("*.json")):
        name = f.stem
        if not NAME_RE.fullmatch(name):
            continue
        try:
            st = json.loads(f.read_text())
        except (OSError, ValueError):
            continue  # being written right now (atomic rename) or foreign: leave it
        if pid_alive(st.get("pid"), st.get("pid_create_time")):
            continue
        sb = st.get("sandbox") or {}
        if sb.get("path"):
            remove_stale_sandbox(Path(sb["path"]), sb.get("kind", "v1"))
        _forget(name)
        swept.append(name)
    return swept


# ------------------------------------------------------------- client side


def _request(name: str, req: dict, *, on_event: Callable[[dict], None] | None = None,
             timeout: float | None = 30.0) -> dict:
    """One request to a live holder; streamed ``event`` lines go to ``on_event``."""
    with _sock_addr(name) as addr, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(addr)
        s.sendall((json.dumps(req) + "\n").encode())
        f = s.makefile("r", encoding="utf-8")
        for line in f:
            msg = json.loads(line)
            if "event" in msg:
                if on_event is not None:
                    on_event(msg)
                continue
            return msg
    raise KtstrError(f"holder {name} closed the connection without an answer", kind="holder-error")


def _live_state(name: str) -> dict:
    st = read_state(name)
    if st is None:
        raise KtstrError(
            f"no holder named {name} (no {state_path(name)}); run `{LABEL} holder acquire "
            f"--name {name}` first",
            kind="holder-missing",
        )
    if not pid_alive(st.get("pid"), st.get("pid_create_time")):
        raise KtstrError(
            f"holder {name} (pid {st.get('pid')}) is no longer running; its reservation is "
            f"gone. Acquire a new one.",
            kind="holder-dead",
        )
    return st


def join_holder(name: str) -> dict:
    """Put the calling process into the holder's cgroup and CPU affinity; return its state.

    For the pipeline's ``--holder``: make and its children inherit both. A
    bypass holder has nothing to join. Order matters for v1/v2 alike: the
    cgroup first (the kernel resets affinity to the cpuset on attach), then
    the explicit affinity, which also covers an inert (kind ``none``) sandbox.
    """
    st = _live_state(check_name(name))
    sandbox = st.get("sandbox") or {}
    if sandbox.get("path"):
        from ktstr_steps.sandbox import write_cgroup_file

        try:
            write_cgroup_file(Path(sandbox["path"]) / "cgroup.procs", str(os.getpid()))
        except OSError as exc:
            raise KtstrError(
                f"cannot join holder {name}'s cgroup {sandbox['path']}: {exc}", kind="holder-error"
            ) from exc
    plan = st.get("plan")
    if plan and plan.get("cpus"):
        try:
            os.sched_setaffinity(0, plan["cpus"])
        except OSError as exc:
            raise KtstrError(
                f"cannot set CPU affinity {format_cpulist(plan['cpus'])} from holder {name}: {exc}",
                kind="holder-error",
            ) from exc
    return st


def acquire(
    name: str,
    *,
    cap: int | None = None,
    wait: float = 0.0,
    owner_pid: int | None = None,
    max_lifetime: float | None = None,
    lock_dir: Path | None = None,
) -> dict:
    """Start a holder and wait until it holds the reservation; return its state.

    Raises KtstrError (holder gone, nothing held) when the reservation fails.
    SIGTERM/SIGINT to this command while waiting is forwarded to the holder,
    which drops whatever it already took.
    """
    check_name(name)
    if cap is not None and cap < 1:
        raise KtstrError(f"--cpu-cap must be ≥ 1 CPU (got {cap})", kind="invalid-cap")
    if wait < 0 or (max_lifetime is not None and max_lifetime <= 0):
        raise KtstrError("--wait must be ≥ 0 and --max-lifetime > 0 seconds", kind="invalid-argument")
    owner = os.getppid() if owner_pid is None else owner_pid
    owner_ctime = _create_time(owner)
    if owner_ctime is None or not pid_alive(owner):
        raise KtstrError(f"--owner-pid {owner}: no such running process", kind="invalid-argument")
    holders_dir(create=True)
    sweep_stale()
    existing = read_state(name)
    if existing is not None:
        raise KtstrError(
            f"holder {name} already exists (pid {existing.get('pid')}); release it first with "
            f"`{LABEL} holder release --name {name}`",
            kind="holder-exists",
        )
    rfd, wfd = os.pipe()
    argv = [sys.executable, "-m", "ktstr_steps.holder", "--name", name, "--ready-fd", str(wfd),
            "--wait", repr(float(wait)), "--owner-pid", str(owner), "--owner-ctime", repr(owner_ctime)]
    if cap is not None:
        argv += ["--cpu-cap", str(cap)]
    if max_lifetime is not None:
        argv += ["--max-lifetime", repr(float(max_lifetime))]
    if lock_dir is not None:
        argv += ["--lock-dir", str(lock_dir)]
    log = open(log_path(name), "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(wfd,),
            start_new_session=True,  # no terminal signals, survives this command's group
            close_fds=True,
        )
    finally:
        log.close()
        os.close(wfd)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    result: dict | None = None
    try:
        with os.fdopen(rfd, "r", encoding="utf-8") as pipe:
            for line in pipe:
                msg = json.loads(line)
                if "stderr" in msg:
                    sys.stderr.write(msg["stderr"])  # the holder's diagnostics while acquiring
                    sys.stderr.flush()
                else:
                    result = msg
                    break
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if result is not None and "ready" in result:
        return result["ready"]
    # failure: wait for the holder to finish releasing so "nothing left held" holds on return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if result is not None and "error" in result:
        raise KtstrError(result["error"], kind=result.get("kind", "holder-error"))
    tail = ""
    with contextlib.suppress(OSError):
        tail = log_path(name).read_text()[-2000:]
    raise KtstrError(
        f"holder {name} exited (status {proc.returncode}) before it was ready; log "
        f"{log_path(name)}:\n{tail}",
        kind="holder-error",
    )


def lock_source(name: str, source: Path, *, wait: float | None = None) -> dict:
    """Have the holder take the source-tree lock; its waiting messages go to our stderr."""
    st = _live_state(check_name(name))
    canonical = str(Path(source).expanduser().resolve())

    def relay(ev: dict) -> None:
        sys.stderr.write(ev.get("text", ""))
        sys.stderr.flush()

    resp = _request(name, {"op": "lock-source", "source": canonical, "wait": wait},
                    on_event=relay, timeout=None)
    if not resp.get("ok"):
        raise KtstrError(resp.get("error", "lock-source failed"), kind=resp.get("kind", "holder-error"))
    return {"name": st["name"], **resp["lock"]}


def status(name: str) -> dict:
    st = read_state(check_name(name))
    if st is None:
        raise KtstrError(f"no holder named {name} (no {state_path(name)})", kind="holder-missing")
    return _public(st)


def list_holders() -> list[dict]:
    d = holders_dir()
    out = []
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            out.append(_public(json.loads(f.read_text())))
    return out


def release(name: str, *, timeout: float = 15.0) -> dict:
    """Release in order source lock → sandbox → LLC locks and wait for the holder to exit.

    Idempotent: an unknown holder is not an error (``released: []``); a dead
    holder's leftover cgroup is removed and reported.
    """
    check_name(name)
    st = read_state(name)
    if st is None:
        say(f"no holder named {name}; nothing to release")
        return {"name": name, "released": []}
    pid, ctime = st.get("pid"), st.get("pid_create_time")
    if not pid_alive(pid, ctime):
        from ktstr_steps.sandbox import remove_stale_sandbox

        released = []
        sb = st.get("sandbox") or {}
        if sb.get("path") and Path(sb["path"]).exists():
            if remove_stale_sandbox(Path(sb["path"]), sb.get("kind", "v1")):
                released.append("sandbox")
        _forget(name)
        say(f"holder {name} (pid {pid}) was already gone; its flocks died with it")
        return {"name": name, "released": released}
    try:
        resp = _request(name, {"op": "release"}, timeout=timeout)
        released = list(resp.get("released") or [])
    except (OSError, ValueError, KtstrError) as exc:
        # Socket unusable: SIGTERM makes the holder release in the same order.
        warn(f"holder {name} did not answer on its socket ({exc}); sending SIGTERM")
        released = [k for k, held in (("source-lock", st.get("source_lock")),
                                      ("sandbox", (st.get("sandbox") or {}).get("path")),
                                      ("llc-locks", st.get("plan"))) if held]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid, ctime) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid, ctime):
        raise KtstrError(f"holder {name} (pid {pid}) did not exit within {timeout:g}s", kind="holder-error")
    _forget(name)
    return {"name": name, "released": released}


def run(name: str, cmd: list[str]) -> int:
    """Join the holder, then exec ``cmd`` (this process becomes it; its status is ours)."""
    if not cmd:
        raise KtstrError("holder run needs a command after --", kind="invalid-argument")
    join_holder(name)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        print(f"{LABEL}: error: cannot run {cmd[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached


# ------------------------------------------------------------- holder side


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
        self.srclock: Any = None
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
        while not self.stop.is_set():
            why = None
            if not pid_alive(owner, ctime):
                why = f"owner pid {owner} exited"
            elif self.deadline is not None and time.monotonic() >= self.deadline:
                why = f"max lifetime {self.args.max_lifetime:g}s passed"
            if why:
                if self.ready:
                    self.request_stop(why)
                else:
                    # still acquiring in the main thread: interrupt it like SIGTERM would
                    self.request_stop(why)
                    os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(POLL)

    def state(self) -> dict:
        from ktstr_steps.reservation import plan_json

        res = self.res
        return {
            "name": self.name,
            "pid": os.getpid(),
            "pid_create_time": _create_time(os.getpid()),
            "bypass": bool(res and res.bypass),
            "plan": plan_json(res.plan, res.make_jobs) if res is not None and res.plan is not None else None,
            "sandbox": res.sandbox.to_json() if res is not None and res.sandbox is not None
            else {"kind": "none", "path": None},
            "make_jobs": res.make_jobs if res is not None else None,
            "owner_pid": self.args.owner_pid,
            "max_lifetime": self.args.max_lifetime,
            "started_at": self.started,
            "source_lock": {"source": self.source, "lockfile": str(self.srclock.path)}
            if self.srclock is not None else None,
            "log": str(log_path(self.name)),
            "socket": str(holders_dir() / _sock_name(self.name)),
        }

    def write_state(self) -> None:
        _write_json_atomic(state_path(self.name), self.state())

    def release_all(self) -> list[str]:
        """Source lock → sandbox → LLC locks (§1.4); each step runs even if an earlier one fails."""
        with self.lock:
            if self.released is not None:
                return self.released
            out: list[str] = []
            src, self.srclock = self.srclock, None
            res = self.res
            try:
                if src is not None:
                    src.release()
                    out.append("source-lock")
            finally:
                if res is not None:
                    if res.sandbox is not None and res.sandbox.kind != "none":
                        out.append("sandbox")
                    if res.plan is not None:
                        out.append("llc-locks")
                    res.release()  # sandbox teardown, then the flocks
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
        with _sock_addr(self.name) as addr:
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
                (holders_dir() / _sock_name(self.name)).unlink()

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
                else:
                    send({"ok": False, "error": f"unknown request {op!r}", "kind": "holder-error"})
            except (OSError, ValueError):
                return  # the client went away; nothing to answer

    def _lock_source(self, req: dict, emit: Callable[[str], None]) -> dict:
        from ktstr_steps import cache
        from ktstr_steps.srclock import acquire_source_tree_lock
        from ktstr_steps.util import bypass_llc_locks

        with self.lock:
            if self.stop.is_set() or self.released is not None:
                return {"ok": False, "error": f"holder {self.name} is releasing", "kind": "holder-error"}
            if self.srclock is not None:
                if self.source == req.get("source"):
                    return {"ok": True, "lock": {"lockfile": str(self.srclock.path), "waited_seconds": 0.0,
                                                 "holders_seen": []}}
                return {"ok": False, "kind": "holder-error",
                        "error": f"holder {self.name} already holds the source lock of {self.source}"}
        if (self.res is not None and self.res.bypass) or bypass_llc_locks():
            # ktstr takes no source-tree lock under KTSTR_BYPASS_LLC_LOCKS (§4.1)
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
            self.srclock, self.source = lk, req["source"]
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
    args = ap.parse_args(argv)
    relay = _ThreadRelay(sys.stderr)
    sys.stderr = relay
    return Holder(args, relay).run(args.ready_fd)


if __name__ == "__main__":
    sys.exit(_serve_main())
