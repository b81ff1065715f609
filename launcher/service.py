"""The whole ktstr-ci service of one host: set up, start, stop and inspect it.

:class:`Service` does for any settings what ``make run`` needs (``python -m
launcher start``, idempotent):

1. secrets in ``paths.secrets``: one password per worker, the hook password,
   the web users file with a generated ``admin`` password, the webhook secrets;
2. the master directory (``master.basedir``, default ``var/master``) with a
   ``buildbot.tac`` that runs this checkout's ``master.cfg`` with these
   settings, and its database created or upgraded (``buildbot upgrade-master``);
3. each hosted bare repository (``var/linux.git``) with the ktstr-ci hooks;
4. one worker directory per LLC group (``var/workers/<host>-llc<i>``);
5. starts the master (``buildbot start``) and, under this service's
   ``supervisord`` (:mod:`workers.supervise`, which restarts a worker that
   dies), each worker pinned to its CPUs (``workers.launch`` sets the
   affinity, then execs ``buildbot-worker start --nodaemon``), skipping
   whatever already runs;
6. waits until the web server answers and every worker is connected.

``stop`` stops the workers and their supervisord, then the master (only
processes whose pid files we wrote and that are still alive); ``status``
collects what runs, and each worker's restarts.

:meth:`Service.start_workers` is ``start --workers-only``: a worker host of a
``workers.mode = "list"`` master starts only its listed workers, pinned,
connecting to ``master.pb_bind`` (see docs/scale-out.md).

The test harness (``tests/servicekit.py``) runs this same class in a temp
directory.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
import xmlrpc.client
from pathlib import Path
from typing import Any

from ktstr_steps.cpulist import format_cpulist
from ktstr_steps.paths import KTSTR_KCONFIG_ENV
from launcher.procs import ProcState, alive, pid_alive, stop_pid, tail
from launcher.tacs import master_tac, worker_tac
from master import hooks
from settings import (
    ENV_VAR,
    REPO_ROOT,
    Settings,
    ensure_secret,
    ensure_users,
    ensure_webhook_secrets,
    read_secret,
    read_users,
)
from settings.worker_specs import WorkerSpec, worker_specs
from workers import supervise

VENV_BIN = Path(sys.executable).parent


class ServiceError(RuntimeError):
    """Setup or start failed; the message says what and where to look."""


class Service:
    """Set up, start, stop and inspect one master and its local workers."""

    def __init__(
        self,
        settings: Settings,
        *,
        configfile: Path | None = None,
        env: dict[str, str] | None = None,
        out: Any = None,
    ) -> None:
        self.settings = settings
        self.configfile = Path(configfile or REPO_ROOT / "master.cfg")
        self.env = dict(os.environ if env is None else env)
        self.out = out or (lambda msg: print(msg, flush=True))
        self.specs: list[WorkerSpec] = worker_specs(settings)

    # -- paths ---------------------------------------------------------

    @property
    def master_dir(self) -> Path:
        return self.settings.master.basedir

    @property
    def local_specs(self) -> list[WorkerSpec]:
        return [s for s in self.specs if s.local]

    def admin_login(self) -> tuple[str, str] | None:
        users = read_users(self.settings.web.users_file)
        for name in self.settings.web.admins:
            if name in users:
                return name, users[name]
        return None

    def child_env(self) -> dict[str, str]:
        env = dict(self.env)
        # Steps run `ktstr-ci` from this venv; the worker finds it on PATH.
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        env["KTSTR_CACHE_DIR"] = str(self.settings.paths.kernel_cache)
        if self.settings.kconfig.ktstr_fragment is not None:
            env[KTSTR_KCONFIG_ENV] = str(self.settings.kconfig.ktstr_fragment)
        else:
            env.pop(KTSTR_KCONFIG_ENV, None)
        env[ENV_VAR] = str(self.settings.source)
        env.pop("VIRTUAL_ENV", None)
        # `make run` is itself a make: its jobserver and flags must not reach the
        # long-lived master and workers (and through them every kernel make).
        for name in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES", "GNUMAKEFLAGS"):
            env.pop(name, None)
        return env

    # -- setup ---------------------------------------------------------

    def setup(self) -> None:
        """Create everything start needs; safe to run again (keeps existing secrets/data)."""
        s = self.settings
        for d in (s.paths.secrets, s.paths.workers, s.paths.tree_store, s.paths.kernel_cache,
                  self.master_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(s.paths.secrets, 0o700)
        ensure_secret(s.hook.password_file)
        ensure_users(s.web.users_file, s.web.admins)
        ensure_webhook_secrets(s)  # generated here too, so they exist before the master runs
        for spec in self.specs:
            ensure_secret(spec.password_file)
        for repo in s.repos:
            if repo.hosted and repo.path is not None:
                if hooks.ensure_bare_repo(repo.path):
                    self.out(f"ktstr-ci: created the bare repository {repo.path}")
                hooks.install(repo.path, hooks.hook_config(s, repo), python=sys.executable)
        self._setup_master()
        for spec in self.local_specs:
            self._setup_worker(spec)

    def _setup_master(self) -> None:
        if self.master_state().running:
            # upgrade-master refuses to touch a running master; it is set up already.
            return
        # A master killed with SIGKILL leaves its pid file, and until init reaps the
        # zombie, buildbot (upgrade-master, start) takes it for a running master.
        (self.master_dir / "twistd.pid").unlink(missing_ok=True)
        env = {ENV_VAR: str(self.settings.source)}
        if self.env.get("KTSTR_SYSFS_ROOT"):
            # The master computes the worker list from the same topology.
            env["KTSTR_SYSFS_ROOT"] = self.env["KTSTR_SYSFS_ROOT"]
        tac = master_tac(env=env, basedir=str(self.master_dir), configfile=str(self.configfile))
        (self.master_dir / "buildbot.tac").write_text(tac)
        # Creates or upgrades Buildbot's schema; also checks the configuration.
        proc = subprocess.run(
            [str(VENV_BIN / "buildbot"), "upgrade-master", "--quiet", str(self.master_dir)],
            env=self.child_env(), cwd=self.master_dir, capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise ServiceError(
                "buildbot upgrade-master failed (the configuration or database is not usable):\n"
                + (proc.stdout + proc.stderr).strip()
            )

    def _setup_worker(self, spec: WorkerSpec) -> None:
        spec.basedir.mkdir(parents=True, exist_ok=True)
        host = self.settings.master.pb_bind
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        tac = worker_tac(
            basedir=str(spec.basedir), password_file=str(spec.password_file), host=host,
            port=self.settings.master.pb_port, name=spec.name,
            keepalive=self.settings.workers.keepalive, numcpus=len(spec.cpus),
        )
        (spec.basedir / "buildbot.tac").write_text(tac)
        info = spec.basedir / "info"
        info.mkdir(exist_ok=True)
        (info / "admin").write_text("ktstr-ci <root@localhost>\n")
        (info / "host").write_text(
            f"{spec.host} LLC group {spec.llc_index}, CPUs {format_cpulist(spec.cpus)}\n"
        )

    # -- state -------------------------------------------------------------

    def master_state(self) -> ProcState:
        pidfile = self.master_dir / "twistd.pid"
        pid = pid_alive(pidfile)
        return ProcState("master", pidfile, pid, pid is not None)

    @property
    def supervisor(self) -> supervise.Supervisor:
        """The supervisord of this service's workers (its files in ``paths.workers``)."""
        return supervise.Supervisor(self.settings.paths.workers)

    @staticmethod
    def starts_file(spec: WorkerSpec) -> Path:
        return spec.basedir / "starts"

    def program(self, spec: WorkerSpec) -> supervise.Program:
        """The supervised program of one local worker (see workers/supervise.py)."""
        assert spec.pin_cpus is not None
        argv = (
            sys.executable, "-m", "workers.launch", "--cpus", format_cpulist(spec.pin_cpus),
            "--pidfile", str(spec.basedir / "twistd.pid"),
            "--starts-file", str(self.starts_file(spec)),
            "--", str(VENV_BIN / "buildbot-worker"), "start", "--nodaemon", str(spec.basedir),
        )
        return supervise.Program(spec.name, argv, REPO_ROOT, spec.basedir / "supervised.log")

    def _unsupervised_pid(self, spec: WorkerSpec) -> int | None:
        """The pid of a worker of ``spec`` that runs without a supervisord (or None).

        Left by a supervisord that was killed, or by an older ``make run`` that
        started workers as daemons; the pid file must name a live process
        running this worker directory (not a reused pid).
        """
        pid = pid_alive(spec.basedir / "twistd.pid")
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            return None
        return pid if str(spec.basedir).encode() in args else None

    def worker_state(self, spec: WorkerSpec) -> ProcState:
        pidfile = spec.basedir / "twistd.pid"
        sv = self.supervisor
        info = None
        if sv.pid() is not None:
            try:
                info = sv.info(spec.name)
            except (OSError, xmlrpc.client.Error):
                info = None
        if info is not None:
            pid = info.pid if info.running and info.pid and alive(info.pid) else None
            state = ProcState(spec.name, pidfile, pid, pid is not None, state=info.state,
                              supervised=True,
                              restarts=supervise.restarts(self.starts_file(spec)))
        else:
            pid = self._unsupervised_pid(spec)
            state = ProcState(spec.name, pidfile, pid, pid is not None)
        if pid is not None:
            try:
                state.affinity = sorted(os.sched_getaffinity(pid))
            except OSError:
                state.affinity = None
        return state

    # -- start / stop ----------------------------------------------------

    def start(self, *, timeout: float = 90.0) -> None:
        """Set up, start what is not running, wait until usable."""
        self.setup()
        if self.master_state().running:
            self.out(f"ktstr-ci: master already running (pid {self.master_state().pid})")
        else:
            self._start_master(timeout)
        self.start_local_workers(timeout=timeout)
        self.wait_ready(timeout=timeout)

    def _start_master(self, timeout: float) -> None:
        log = self.master_dir / "twistd.log"
        proc = subprocess.run(
            [str(VENV_BIN / "buildbot"), "start", f"--start_timeout={int(timeout)}",
             str(self.master_dir)],
            env=self.child_env(), cwd=self.master_dir, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout + 30,
        )
        if proc.returncode != 0 or not self.master_state().running:
            raise ServiceError(
                f"the master did not start; see {log}:\n"
                + (proc.stdout + proc.stderr).strip()
                + "\n--- end of twistd.log ---\n" + tail(log)
            )

    def start_local_workers(self, *, timeout: float = 90.0) -> None:
        """Run every local worker under this service's supervisord (started if needed).

        Idempotent: a running worker is left running. A worker left running
        without a supervisord (the supervisord was killed, or an older
        ``make run`` daemonized it) is stopped first, so that exactly one
        process of it runs and supervisord watches it.
        """
        specs = self.local_specs
        if not specs:
            return
        sv = self.supervisor
        try:
            sv.write_config([self.program(spec) for spec in specs])
            if sv.pid() is None:
                for spec in specs:
                    pid = self._unsupervised_pid(spec)
                    if pid is not None:
                        self.out(f"ktstr-ci: worker {spec.name} runs without its supervisor "
                                 f"(pid {pid}); restarting it under supervisord")
                        stop_pid(pid, 30.0)
                    # restarts count from this supervisord's start
                    self.starts_file(spec).unlink(missing_ok=True)
                    self._warn_pin(spec)
                sv.start(self.child_env())  # starts every program (autostart)
            else:
                if not sv.answering():
                    raise ServiceError(
                        f"supervisord (pid {sv.pid()}) does not answer on {sv.sock}; see "
                        f"{sv.log}; stop it (kill {sv.pid()}) and start again"
                    )
                kept = sv.update()
                if kept:
                    self.out(f"ktstr-ci: {', '.join(kept)} keep running as started; "
                             "`make stop; make run` applies changed worker settings")
                for spec in specs:
                    info = sv.info(spec.name)
                    if info is not None and info.running:
                        self.out(f"ktstr-ci: worker {spec.name} already running (pid {info.pid})")
                        continue
                    self._warn_pin(spec)
                    sv.start_program(spec.name)
            sv.wait_running(
                [spec.name for spec in specs], timeout=timeout,
                logs={spec.name: [spec.basedir / "supervised.log", spec.basedir / "twistd.log"]
                      for spec in specs},
            )
        except (supervise.SupervisorError, OSError, xmlrpc.client.Error) as exc:
            raise ServiceError(f"{exc}\n(supervisord: {sv.conf}, log {sv.log})") from None

    def _start_worker(self, spec: WorkerSpec) -> None:
        # Callers that start one worker at a time: every local worker runs under
        # the one supervisord, so this starts whichever are not running.
        self.start_local_workers()

    def _warn_pin(self, spec: WorkerSpec) -> None:
        if spec.pin_note:
            self.out(f"ktstr-ci: warning: worker {spec.name}: {spec.pin_note}")

    def wait_ready(self, *, timeout: float = 90.0) -> None:
        """Wait until the web server answers and every local worker is connected."""
        deadline = time.monotonic() + timeout
        want = {s.name for s in self.local_specs}
        last = "the web server did not answer"
        while time.monotonic() < deadline:
            try:
                workers = self.api("workers")["workers"]
            except (OSError, ValueError) as exc:
                last = f"the web server at {self.settings.web_url} did not answer ({exc})"
            else:
                connected = {w["name"] for w in workers if w.get("connected_to")}
                missing = want - connected
                if not missing:
                    return
                last = f"workers not connected: {', '.join(sorted(missing))}"
            if not self.master_state().running:
                raise ServiceError(
                    f"the master stopped; see {self.master_dir / 'twistd.log'}:\n"
                    + tail(self.master_dir / "twistd.log")
                )
            time.sleep(0.2)
        raise ServiceError(
            f"not ready after {timeout:.0f}s: {last}; see {self.master_dir / 'twistd.log'} and "
            f"{self.settings.paths.workers}/<name>/twistd.log"
        )

    def stop(self, *, timeout: float = 30.0, workers_only: bool = False) -> list[str]:
        """Stop local workers and their supervisord, then the master (unless ``workers_only``).

        Returns what was stopped.
        """
        stopped = []
        sv = self.supervisor
        if sv.pid() is not None:
            names = [spec.name for spec in self.local_specs]
            try:
                stopped += sv.stop_programs(names, timeout=timeout + 15)
            except (supervise.SupervisorError, OSError, xmlrpc.client.Error) as exc:
                self.out(f"ktstr-ci: warning: supervisord did not stop the workers ({exc}); "
                         "stopping it")
            sv.shutdown(timeout=timeout + 30)
        for spec in self.local_specs:
            pid = self._unsupervised_pid(spec)
            if pid is not None and stop_pid(pid, timeout) and spec.name not in stopped:
                stopped.append(spec.name)
        if not workers_only:
            pid = pid_alive(self.master_dir / "twistd.pid")
            if pid is not None and stop_pid(pid, timeout):
                stopped.append("master")
        return stopped

    # -- a worker host (no master here) -----------------------------------

    def start_workers(self, *, timeout: float = 90.0) -> None:
        """``start --workers-only``: this host's listed workers, started pinned; no master.

        For a worker host of a ``workers.mode = "list"`` master: the entries whose
        ``host`` is this host (``master.host``, default the short host name) are
        set up and started, and connect to ``master.pb_bind``:``master.pb_port``,
        which in a worker host's settings is the master's address. Passwords are
        never generated here: a new one would not match the master's copy.
        """
        s = self.settings
        specs = self.local_specs
        if not specs:
            raise ServiceError(
                f"no entry of workers.list in {s.source} has host = {s.master.host!r} "
                "(this host; set master.host or the entries' host)"
            )
        missing = [str(sp.password_file) for sp in specs if read_secret(sp.password_file) is None]
        if missing:
            raise ServiceError(
                "worker password files missing: " + ", ".join(missing) + "; copy them from "
                "the master host's paths.secrets/workers/ (the master generated them)"
            )
        for d in (s.paths.workers, s.paths.tree_store, s.paths.kernel_cache):
            d.mkdir(parents=True, exist_ok=True)
        started: dict[str, int] = {}
        for spec in specs:
            self._setup_worker(spec)
            if self.worker_state(spec).running:
                continue
            log = spec.basedir / "twistd.log"
            # Only log lines written after this start count as "connected".
            started[spec.name] = log.stat().st_size if log.exists() else 0
        self.start_local_workers(timeout=timeout)
        self._wait_logged_in(started, timeout)

    def _wait_logged_in(self, offsets: dict[str, int], timeout: float) -> None:
        # The master's web server may be out of reach from a worker host, so the
        # worker's own log says when it got in.
        deadline = time.monotonic() + timeout
        pending = dict(offsets)
        while pending:
            for spec in self.local_specs:
                if spec.name not in pending:
                    continue
                try:
                    with open(spec.basedir / "twistd.log", "rb") as f:
                        f.seek(pending[spec.name])
                        text = f.read().decode(errors="replace")
                except OSError:
                    text = ""
                if "Connected to buildmaster; worker is ready" in text:
                    del pending[spec.name]
            if not pending:
                return
            if time.monotonic() >= deadline:
                s = self.settings.master
                raise ServiceError(
                    f"workers not connected after {timeout:.0f}s to {s.pb_bind}:{s.pb_port}: "
                    + ", ".join(sorted(pending))
                    + f"; see {self.settings.paths.workers}/<name>/twistd.log (firewall, "
                    "master.pb_bind, password)"
                )
            time.sleep(0.2)

    # -- REST ---------------------------------------------------------------

    def api(self, path: str, *, auth: tuple[str, str] | None = None, timeout: float = 5.0) -> Any:
        """GET ``/api/v2/<path>`` on the local master and decode the JSON."""
        host = self.settings.web.bind if self.settings.web.bind not in ("", "0.0.0.0", "::") else "127.0.0.1"
        req = urllib.request.Request(f"http://{host}:{self.settings.web.port}/api/v2/{path}")
        if auth:
            tok = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {tok}")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
