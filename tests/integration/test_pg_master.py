"""A real master with Buildbot's database and the records database on PostgreSQL.

The cluster is a throwaway one of tests/support/pg.py, started for this module and
removed at its end (the test asserts that no postgres process is left). The
two databases are two *databases* of that cluster (``ktci_buildbot`` and
``ktci_records``), as in settings/postgres-example.toml: Buildbot's
schema and ours never share a namespace or an alembic version table.

Also here: the documented example settings file loads, validates and turns into
a master configuration, and its records URL works with ``ktstr-ci records
--upgrade`` (the scale-out guide's setup step).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy import create_engine, inspect, text

import settings as settings_mod
from tests.support.fakekernel import tree_files
from tests.support.pg import PgCluster
from tests.support.servicekit import REPO, ServiceKit

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.timeout(300)]

EXAMPLE = REPO / "settings" / "postgres-example.toml"


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    c = PgCluster()
    try:
        c.initdb()
        c.start()
        yield c
    finally:
        proc = c.proc
        family = _postgres_family(proc.pid) if proc is not None else []
        c.remove()
        # Nothing of the cluster outlives the module: no server process, no files.
        assert not [p for p in family if _alive(p)], "postgres processes left running"
        assert not c.root.exists()


def _postgres_family(pid: int) -> list[int]:
    try:
        parent = psutil.Process(pid)
        return [pid, *(p.pid for p in parent.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _scalar(url: str, sql: str, **params: object) -> object:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()
    finally:
        engine.dispose()


def test_master_on_postgresql_for_both_databases(tmp_path: Path, cluster: PgCluster) -> None:
    for name in ("ktci_buildbot", "ktci_records"):
        cluster.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cluster.admin(f'CREATE DATABASE "{name}"')
    bb_url, rec_url = cluster.url("ktci_buildbot"), cluster.url("ktci_records")
    with ServiceKit(tmp_path, llc_groups=[[0, 1]],
                    databases={"buildbot": bb_url, "records": rec_url}) as kit:
        assert kit.settings.databases.buildbot == bb_url
        tree = kit.make_tree(tree_files(), path=kit.root / "src" / "pg")
        push = kit.push(tree, "on-postgres")
        build = kit.wait_finished(kit.wait_build("on-postgres", timeout=30)["buildid"], timeout=240)
        assert build["results"] == kit.SUCCESS, kit.build_steps(build["buildid"])
        bid = build["buildid"]
        props = kit.build_properties(bid)

        # The running master holds connections to both databases.
        active = _scalar(
            cluster.url("postgres"),
            "SELECT string_agg(DISTINCT datname, ',' ORDER BY datname) FROM pg_stat_activity "
            "WHERE datname LIKE 'ktci_%'",
        )
        assert active == "ktci_buildbot,ktci_records"

        # Buildbot's own tables and this build's rows are in PostgreSQL.
        engine = create_engine(bb_url)
        try:
            assert engine.dialect.name == "postgresql"
            tables = set(inspect(engine).get_table_names())
            assert {"builds", "steps", "logs", "logchunks", "workers", "changes",
                    "buildrequests", "alembic_version"} <= tables
            assert "kernel_builds" not in tables  # ours live in the other database
            with engine.connect() as conn:
                row = conn.execute(
                    text("SELECT b.results, w.name FROM builds b JOIN workers w "
                         "ON w.id = b.workerid WHERE b.id = :id"), {"id": bid}).one()
                assert tuple(row) == (0, "kit-llc0")
                steps = [r[0] for r in conn.execute(
                    text("SELECT name FROM steps WHERE buildid = :id ORDER BY number"), {"id": bid})]
                assert {"reserve", "checkout", "make", "cache-store", "record", "release"} <= set(steps)
                rev = conn.execute(text(
                    "SELECT ss.revision FROM changes c JOIN sourcestamps ss "
                    "ON ss.id = c.sourcestampid WHERE ss.branch = 'on-postgres'")).scalar()
                assert rev == push.sha
        finally:
            engine.dispose()

        # The records row is in the records database, under our own alembic table.
        engine = create_engine(rec_url)
        try:
            tables = set(inspect(engine).get_table_names())
            assert "kernel_builds" in tables and "builds" not in tables
            with engine.connect() as conn:
                rec = conn.execute(text(
                    "SELECT branch, revision, worker, host, kernel_outcome, cache_key "
                    "FROM kernel_builds WHERE buildid = :id"), {"id": bid}).one()
            assert tuple(rec) == ("on-postgres", push.sha, "kit-llc0", "kit", "cached",
                                  props["cache_key"])
        finally:
            engine.dispose()

        # No SQLite file was created on the side.
        assert not list(kit.root.rglob("*.sqlite"))
    # The stopped master closed its connections.
    left = _scalar(cluster.url("postgres"),
                   "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE 'ktci_%'")
    assert left == 0


def test_postgres_example_settings_validate_and_configure(tmp_path: Path, cluster: PgCluster) -> None:
    text_ = EXAMPLE.read_text()
    # As is: valid settings (the URLs only have to be URLs to validate).
    s = settings_mod.load(EXAMPLE)
    assert s.databases.buildbot.startswith("postgresql+psycopg2://")
    assert s.databases.records.startswith("postgresql+psycopg2://")
    assert s.databases.buildbot != s.databases.records
    assert s.workers.mode == "list"
    hosts = {w.host for w in s.workers.listed}
    assert {"ci-master", "buildhost1", "buildhost2"} <= hosts
    assert s.master.pb_bind not in ("0.0.0.0", "::", "127.0.0.1")

    # With a live server's URLs substituted: the records schema is set up by the
    # documented command, and the master configuration builds from the file.
    cluster.admin('DROP DATABASE IF EXISTS "ktci_example" WITH (FORCE)')
    cluster.admin('CREATE DATABASE "ktci_example"')
    rec_url = cluster.url("ktci_example")
    local = re.sub(r'^records = ".*"$', f'records = "{rec_url}"', text_, flags=re.M)
    local = re.sub(r'^buildbot = ".*"$', f'buildbot = "{cluster.url("postgres")}"', local,
                   flags=re.M)
    assert local != text_
    path = tmp_path / "settings.toml"
    path.write_text(local)
    s = settings_mod.load(path, root=tmp_path)
    assert s.databases.records == rec_url

    res = subprocess.run([str(Path(sys.executable).parent / "ktstr-ci"), "records", "--upgrade",
                          "--db", s.databases.records, "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert '"builds": []' in res.stdout.replace("\n", "").replace("  ", "")
    engine = create_engine(rec_url)
    try:
        assert "kernel_builds" in inspect(engine).get_table_names()
    finally:
        engine.dispose()

    from master import builders

    c = builders.build_config(s, factory=lambda **_: _tiny_factory())
    workers = {w.name: w for w in c["workers"]}
    # The listed workers, plus the nightly matrix's in-process parent worker.
    assert set(workers) == {w.name for w in s.workers.listed} | {"__matrix"}
    bh2 = workers["buildhost2-llc3"].properties
    assert bh2.getProperty("host") == "buildhost2" and bh2.getProperty("llc_cpus") == "12-15,76-79"
    assert bh2.getProperty("llc_ncpus") == 8
    assert c["db"]["db_url"] == cluster.url("postgres")
    assert c["protocols"]["pb"]["port"] == f"tcp:9989:interface={s.master.pb_bind}"
    cluster.admin('DROP DATABASE IF EXISTS "ktci_example" WITH (FORCE)')


def _tiny_factory():
    from buildbot.process.factory import BuildFactory

    return BuildFactory()
