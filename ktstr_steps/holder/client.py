"""The commands' side of a holder: start one, ask it for the source lock, join it, release it.

Every function here runs in a short-lived ``ktstr-ci`` command on the
worker; the holder itself is :mod:`ktstr_steps.holder.server`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ktstr_steps.buildprocs import MARKER_ENV, Killed, describe, kill_build, marker
from ktstr_steps.cli_values import check_seconds
from ktstr_steps.cpulist import format_cpulist
from ktstr_steps.errors import KtstrError
from ktstr_steps.holder.state import (
    check_name,
    end_dead_holder,
    forget,
    holders_dir,
    is_alive,
    log_path,
    lost_message,
    public,
    read_state,
    sock_addr,
    state_path,
    sweep_stale,
)
from ktstr_steps.liveness import create_time, pid_alive
from ktstr_steps.messages import LABEL, relay, say, warn

GUARD_POLL = 0.2  # how often a joined command checks that its holder still lives
MAX_FDS = 64  # lock descriptors a join may carry (one source lock + one per LLC)


def request(name: str, req: dict, *, on_event: Callable[[dict], None] | None = None,
            timeout: float | None = 30.0) -> dict:
    """One request to a live holder; streamed ``event`` lines go to ``on_event``."""
    with sock_addr(name) as addr, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
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


def live_state(name: str) -> dict:
    """The state of a running holder; a dead one is a lost reservation."""
    st = read_state(check_name(name))
    if st is None:
        raise KtstrError(
            f"no holder named {name} (no {state_path(name)}); run `{LABEL} holder acquire "
            f"--name {name}` first",
            kind="holder-missing",
        )
    if not is_alive(st):
        raise KtstrError(lost_message(st), kind="reservation-lost")
    return st


def check_alive(name: str) -> dict:
    """Raise ``reservation-lost`` unless holder ``name`` still runs (for phases that only read)."""
    return live_state(name)


def _enter(st: dict) -> None:
    """Put this process into the holder's cgroup, affinity and marker (children inherit all)."""
    name = st["name"]
    os.environ[MARKER_ENV] = marker(name, st["pid"])
    sandbox = st.get("sandbox") or {}
    if sandbox.get("path"):
        from ktstr_steps.cgroups import write_cgroup_file

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


def join_holder(name: str) -> dict:
    """Put the calling process into the holder's cgroup and CPU affinity; return its state.

    For the pipeline's ``--holder``: make and its children inherit both. A
    bypass holder has nothing to join. Order matters for v1/v2 alike: the
    cgroup first (the kernel resets affinity to the cpuset on attach), then
    the explicit affinity, which also covers an inert (kind ``none``) sandbox.
    """
    st = live_state(check_name(name))
    _enter(st)
    return st


class ReservationGuard:
    """A joined command's hold on its holder's reservation.

    The command keeps its own descriptors of the holder's flocks (passed over
    the holder's socket), so the locks cannot vanish while any process of
    this command runs, even when the holder is killed: a flock lives as long
    as one descriptor of it. A watch thread notices the holder's death within
    ``GUARD_POLL`` seconds, kills every other process of the build, and only
    then lets go of the source lock, the sandbox and the LLC locks, in that
    order. ``lost`` then holds the message the phase must fail with.
    """

    def __init__(self, state: dict, fds: dict[str, list[int]]) -> None:
        self.state = state
        self.fds = fds
        self.lost: str | None = None
        self.killed: list[Killed] = []
        self._stop = threading.Event()
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="holder-guard", daemon=True)

    def start(self) -> ReservationGuard:
        self._thread.start()
        return self

    def _watch(self) -> None:
        pid, ctime = self.state["pid"], self.state.get("pid_create_time")
        while not self._stop.wait(GUARD_POLL):
            if not pid_alive(pid, ctime):
                self.lost = lost_message(self.state)
                self._end_build()
                return

    def _end_build(self) -> None:
        st = self.state
        sb = st.get("sandbox") or {}
        path = Path(sb["path"]) if sb.get("path") else None
        self.killed, survivors = kill_build(
            path if path is not None and path.exists() else None, marker(st["name"], st["pid"]))
        say(f"{self.lost} Killed: {describe(self.killed) or 'no other process'}")
        if survivors:
            warn(f"processes {survivors} of the build survive SIGKILL")
        self._close("source")
        if path is not None and path.exists():
            from ktstr_steps.cgroups import remove_stale_sandbox

            remove_stale_sandbox(path, sb.get("kind", "v1"))
        self._close("llc")
        self._ended.set()

    def _close(self, which: str) -> None:
        for fd in self.fds.pop(which, []):
            with contextlib.suppress(OSError):
                os.close(fd)

    def wait_ended(self, timeout: float = 30.0) -> None:
        """After a lost reservation: wait until the build's processes are gone and locks let go."""
        self._ended.wait(timeout)

    def stop(self) -> None:
        """The phase is over: stop watching and drop this command's lock descriptors."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.lost is None:
            self._close("source")
            self._close("llc")


def join_and_guard(name: str) -> ReservationGuard:
    """Join holder ``name`` (cgroup, affinity, marker), take copies of its flocks, watch it."""
    check_name(name)
    st = live_state(name)
    fds: dict[str, list[int]] = {}
    try:
        with sock_addr(name) as addr, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(addr)
            s.sendall((json.dumps({"op": "join", "pid": os.getpid()}) + "\n").encode())
            data, got, _flags, _addr = socket.recv_fds(s, 1 << 16, MAX_FDS)
    except (OSError, ValueError) as exc:
        if not is_alive(st):
            raise KtstrError(lost_message(st), kind="reservation-lost") from exc
        raise KtstrError(f"holder {name} did not answer a join: {exc}", kind="holder-error") from exc
    try:
        resp = json.loads(data.decode() or "{}")
        if not resp.get("ok"):
            raise KtstrError(resp.get("error", "join refused"), kind=resp.get("kind", "holder-error"))
        counts = resp.get("fds") or {}
        n_src = int(counts.get("source", 0))
        for fd in got:
            os.set_inheritable(fd, False)  # ours only: make and gcc need not keep them
        fds = {"source": list(got[:n_src]), "llc": list(got[n_src:])}
    except BaseException:
        for fd in got:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    _enter(st)
    return ReservationGuard(st, fds).start()


def acquire(
    name: str,
    *,
    cap: int | None = None,
    wait: float = 0.0,
    owner_pid: int | None = None,
    max_lifetime: float | None = None,
    lock_dir: Path | None = None,
    master_link: str | None = None,
) -> dict:
    """Start a holder and wait until it holds the reservation; return its state.

    Raises KtstrError (holder gone, nothing held) when the reservation fails.
    SIGTERM/SIGINT to this command while waiting is forwarded to the holder,
    which drops whatever it already took.
    """
    from ktstr_steps.holder.link import parse_link

    check_name(name)
    if cap is not None and cap < 1:
        raise KtstrError(f"--cpu-cap must be ≥ 1 CPU (got {cap})", kind="invalid-cap")
    check_seconds(wait, "--wait")
    if max_lifetime is not None:
        check_seconds(max_lifetime, "--max-lifetime", zero_ok=False)
    if master_link is not None:
        parse_link(master_link)
    owner = os.getppid() if owner_pid is None else owner_pid
    owner_ctime = create_time(owner)
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
    argv = [sys.executable, "-m", "ktstr_steps.holder.server", "--name", name, "--ready-fd",
            str(wfd), "--wait", repr(float(wait)), "--owner-pid", str(owner),
            "--owner-ctime", repr(owner_ctime)]
    if cap is not None:
        argv += ["--cpu-cap", str(cap)]
    if max_lifetime is not None:
        argv += ["--max-lifetime", repr(float(max_lifetime))]
    if lock_dir is not None:
        argv += ["--lock-dir", str(lock_dir)]
    if master_link is not None:
        argv += ["--master-link", master_link]
    env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
    log = open(log_path(name), "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(wfd,),
            start_new_session=True,  # no terminal signals, survives this command's group
            close_fds=True, env=env,
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
                    relay(msg["stderr"])  # the holder's diagnostics while acquiring
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
    if wait is not None:
        check_seconds(wait, "--wait")
    st = live_state(check_name(name))
    canonical = str(Path(source).expanduser().resolve())

    def on_event(ev: dict) -> None:
        relay(ev.get("text", ""))

    resp = request(name, {"op": "lock-source", "source": canonical, "wait": wait},
                   on_event=on_event, timeout=None)
    if not resp.get("ok"):
        raise KtstrError(resp.get("error", "lock-source failed"), kind=resp.get("kind", "holder-error"))
    return {"name": st["name"], **resp["lock"]}


def status(name: str) -> dict:
    st = read_state(check_name(name))
    if st is None:
        raise KtstrError(f"no holder named {name} (no {state_path(name)})", kind="holder-missing")
    return public(st)


def list_holders() -> list[dict]:
    d = holders_dir()
    out = []
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            out.append(public(json.loads(f.read_text())))
    return out


def release(name: str, *, timeout: float = 30.0) -> dict:
    """Kill the build's processes, then release source lock → sandbox → LLC locks; wait for exit.

    Idempotent: an unknown holder is not an error (``released: []``); a dead
    holder's leftovers (processes, cgroup) are ended and reported.
    """
    check_name(name)
    st = read_state(name)
    if st is None:
        say(f"no holder named {name}; nothing to release")
        return {"name": name, "released": []}
    pid, ctime = st.get("pid"), st.get("pid_create_time")
    if not pid_alive(pid, ctime):
        released = end_dead_holder(st)
        forget(name)
        say(f"holder {name} (pid {pid}) was already gone; its flocks died with it")
        return {"name": name, "released": released}
    try:
        resp = request(name, {"op": "release"}, timeout=timeout)
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
    forget(name)
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

