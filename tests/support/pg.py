"""A throwaway PostgreSQL server for tests: ``pg_url`` (session) and ``pg_db_url`` (per test).

The cluster is created with the server binaries of the ``postgresql`` package
(the Makefile installs it; CI runs these tests), owned by the ``postgres`` OS
user when we are root because initdb and postgres refuse to run as root. It
listens on 127.0.0.1 on a free port with its unix socket inside the temp dir,
so it cannot collide with a system cluster. Missing binaries are an error, not
a skip: a CI machine without PostgreSQL must fail loudly.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

ENV_BIN = "KTSTR_CI_PG_BIN"  # override the server binary directory


class PostgresUnavailable(RuntimeError):
    pass


def find_bindir() -> Path:
    """The directory holding initdb and postgres: $KTSTR_CI_PG_BIN or Debian's newest version."""
    env = os.environ.get(ENV_BIN)
    if env:
        # An explicit choice is honoured exactly, never silently replaced by another version.
        candidates = [env]
    else:
        candidates = sorted(
            glob.glob("/usr/lib/postgresql/*/bin"),
            key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
            reverse=True,
        )
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(str(Path(on_path).parent))
    for c in candidates:
        if (Path(c) / "initdb").is_file() and (Path(c) / "postgres").is_file():
            return Path(c)
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, postgres) not found in "
        f"{env or '/usr/lib/postgresql/*/bin'} or on PATH: install the Debian package "
        "`postgresql` (`make deps` does) or set KTSTR_CI_PG_BIN"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """One initdb'd cluster in a temp dir and the postmaster we started for it."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="ktstr-ci-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.log = self.root / "postgres.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        # initdb/postgres refuse root; as root run them as the postgres OS user.
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PostgresUnavailable(
                    "running as root but there is no `postgres` OS user to own the test "
                    "cluster: install the Debian package `postgresql`"
                ) from exc
            self.user = "postgres"
            self.sock.mkdir()
            for p in (self.root, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        else:
            self.sock.mkdir()
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "LC_ALL": "C",
            "LANG": "C",
        }

    def _run(self, argv: list[str]) -> None:
        # Popen(user=...) switches uid in the child: no wrapper process between us and it.
        res = subprocess.run(
            argv,
            user=self.user,
            group=self.user,
            extra_groups=[] if self.user else None,
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if res.returncode != 0:
            raise PostgresUnavailable(
                f"{' '.join(argv)} failed ({res.returncode}):\n{res.stdout}{res.stderr}"
            )

    def initdb(self) -> None:
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D", str(self.data),
                "-U", "postgres",
                "--auth=trust",  # loopback + a private socket dir, torn down after the run
                "--no-sync",
                "--no-locale",
                "-E", "UTF8",
            ]
        )  # fmt: skip

    def start(self, attempts: int = 3) -> None:
        last = ""
        for _ in range(attempts):
            self.port = _free_port()
            argv = [
                str(self.bindir / "postgres"),
                "-D", str(self.data),
                "-h", "127.0.0.1",
                "-p", str(self.port),
                "-k", str(self.sock),
                # Durability buys nothing for a throwaway test cluster; speed does.
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
            ]  # fmt: skip
            with open(self.log, "ab") as logf:
                self.proc = subprocess.Popen(
                    argv,
                    user=self.user,
                    group=self.user,
                    extra_groups=[] if self.user else None,
                    env=self.env,
                    cwd=self.root,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a ^C to pytest must not kill it mid-teardown
                )
            if self._wait_ready(timeout=30):
                return
            last = self.log_tail()
            self.stop()
        raise PostgresUnavailable(f"postgres did not start; log tail:\n{last}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False  # exited: port taken, bad config...
            try:
                psycopg2.connect(
                    host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                    connect_timeout=2,
                ).close()  # fmt: skip
                return True
            except psycopg2.OperationalError:
                time.sleep(0.1)
        return False

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def admin(self, sql: str) -> None:
        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres"
        )
        try:
            conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{dbname}"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # SIGINT = postgres "fast" shutdown: disconnects clients, exits cleanly.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster()
    try:
        cluster.initdb()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def pg_url(pg_cluster: PgCluster) -> str:
    """URL of a database ``ktstr_records`` in the session's throwaway cluster."""
    pg_cluster.admin("CREATE DATABASE ktstr_records")
    return pg_cluster.url("ktstr_records")


@pytest.fixture
def pg_db_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh empty database per test (dropped afterwards), for migration tests."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_cluster.admin(f'CREATE DATABASE "{name}"')
    try:
        yield pg_cluster.url(name)
    finally:
        pg_cluster.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
