"""Two hosts: the master's host and a second host in a network namespace, one real master.

Host 1 is this machine's root namespace: the master (checkout's master.cfg,
the real ``kernel_build_factory``) and worker ``host1-llc0``, with a faked
topology of one LLC over CPUs 0-1. Host 2 is a network namespace
(tests/support/netns.py) joined by a veth pair with link-local addresses: its workers
``host2-llc0`` and ``host2-llc1`` run there with their own settings file,
topology (two one-CPU LLC groups through ``KTSTR_SYSFS_ROOT``), kernel cache,
tree store, holder run dir, ``/tmp`` (ktstr's LLC lock files) and copied
worker passwords, started by the worker-host tooling
(``python -m launcher start --workers-only``). The master's PB port
listens on the host end of the veth pair only; host 1's worker connects there
too. Host 2 fetches from the master host's bare repository by its path: the
namespaces split the network, not the filesystem.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from ktstr_steps.buildsteps.base import branch_dir
from master.records import db as records_db
from master.records import queries
from tests.support.fakekernel import slow_tree_files
from tests.support.multihostkit import HOST2_WORKERS, WORKERS_TOML, Host2
from tests.support.netns import NetnsHost
from tests.support.servicekit import REPO, ServiceKit

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]





def test_builds_spread_over_two_hosts(tmp_path: Path, netns_host: NetnsHost) -> None:
    net = netns_host
    with ServiceKit(tmp_path, host="host1", llc_groups=[[0, 1]], pb_bind=net.host_addr,
                    workers_toml=WORKERS_TOML) as kit:
        assert kit.worker_names == ["host1-llc0"]  # host 2's workers are not started here
        h2 = Host2(tmp_path / "host2", kit, net)
        try:
            res = h2.service("start", "--workers-only", "--timeout", "60")
            assert res.returncode == 0, res.stdout + res.stderr
            assert "host2-llc0, host2-llc1" in res.stdout
            host2_pids = [h2.worker_pid(n) for n in HOST2_WORKERS]
            _check_wiring(kit, h2, host2_pids)

            branches = ("spread-a", "spread-b", "spread-c")
            for branch in branches:
                tree = kit.make_tree(slow_tree_files(4, branch), path=kit.root / "src" / branch)
                kit.push(tree, branch)
            builds = [kit.wait_finished(kit.wait_build(b, timeout=30)["buildid"], timeout=240)
                      for b in branches]
            for b in builds:
                assert b["results"] == kit.SUCCESS, kit.build_steps(b["buildid"])
            _check_spread(kit, h2, builds)
        finally:
            # The worker host's own tooling stops its workers (run from outside
            # the namespace: it only needs the pid files).
            stop = h2.service("stop", "--workers-only", timeout=60)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert set(HOST2_WORKERS) <= set(stop.stdout.replace(",", " ").split())
        for pid in host2_pids:
            assert not _alive(pid)
        assert net.pids() == []  # nothing else was left running on host 2
        # Host 2's binds (its /tmp, its tree store) never reached this namespace.
        assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()


def _alive(pid: int) -> bool:
    # A daemonized worker's parent is init; a zombie waiting for it has stopped.
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def established_tcp(pid: int) -> list[tuple[str, str, int]]:
    """(local ip, remote ip, remote port) of ``pid``'s established IPv4 TCP sockets.

    Read from ``/proc/<pid>/net/tcp``, i.e. in the process's own network
    namespace (psutil reads the caller's, which has no such sockets).
    """
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
        if m:
            inodes.add(m.group(1))

    def addr(text: str) -> tuple[str, int]:
        ip, port = text.split(":")
        return socket.inet_ntoa(int(ip, 16).to_bytes(4, "little")), int(port, 16)

    out = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "01" and f[9] in inodes:  # 01 = ESTABLISHED
            (lip, _), (rip, rport) = addr(f[1]), addr(f[2])
            out.append((lip, rip, rport))
    return out


def _check_wiring(kit: ServiceKit, h2: Host2, host2_pids: list[int]) -> None:
    """Host 2's workers live in the namespace and reach the master over the veth pair only."""
    net = h2.net
    workers = {w["name"]: w for w in kit.api("workers")["workers"]}
    for name in ("host1-llc0", *HOST2_WORKERS):
        assert workers[name]["connected_to"], f"{name} is not connected"
    for name, pid in zip(HOST2_WORKERS, host2_pids, strict=True):
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == net.net_inode(), name
        assert established_tcp(pid) == [(net.ns_addr, net.host_addr, kit.pb_port)], name
        assert sorted(psutil.Process(pid).cpu_affinity()) == [HOST2_WORKERS.index(name)]
    # The master listens for workers on the veth address only, not on every address.
    master_pid = kit.service.master_state().pid
    assert master_pid is not None
    listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(master_pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}
    assert (net.host_addr, kit.pb_port) in listening
    assert ("0.0.0.0", kit.pb_port) not in listening and ("::", kit.pb_port) not in listening
    # From host 2, this machine's loopback (the web UI, PB on 127.0.0.1) is out of reach.
    code = ("import socket, sys\ntry:\n socket.create_connection(('127.0.0.1', int(sys.argv[1])),"
            " timeout=2)\nexcept OSError:\n sys.exit(0)\nsys.exit(1)")
    probe = subprocess.run(net.argv([sys.executable, "-c", code, str(kit.web_port)]),
                           cwd=REPO, capture_output=True, text=True, timeout=30)
    assert probe.returncode == 0, "host 2 reached the master's loopback web port"


def _check_spread(kit: ServiceKit, h2: Host2, builds: list[dict]) -> None:
    names = {w["workerid"]: w["name"] for w in kit.api("workers")["workers"]}
    by_worker = {names[b["workerid"]]: b for b in builds}
    # Three builds at once, three free workers, max_builds=1: one build each.
    assert set(by_worker) == {"host1-llc0", *HOST2_WORKERS}, by_worker.keys()
    engine = records_db.make_engine(kit.settings.databases.records, must_exist=True)
    try:
        rows = {r["buildid"]: r for r in queries.recent_builds(engine, limit=100)}
    finally:
        engine.dispose()
    for worker, build in by_worker.items():
        host = worker.split("-")[0]
        props = kit.build_properties(build["buildid"])
        assert props["workername"] == worker and props["host"] == host
        key = props["cache_key"]
        own, other = (kit.cache_dir, h2.cache) if host == "host1" else (h2.cache, kit.cache_dir)
        # Each host stored its kernels in its own cache, and only there.
        assert (own / key / "bzImage").is_file() and (own / key / "metadata.json").is_file()
        assert not (other / key).exists()
        row = rows[build["buildid"]]
        assert (row["host"], row["worker"], row["kernel_outcome"]) == (host, worker, "cached")
        # The per-branch tree was checked out on the build's host, and only there.
        tree = Path("linux-tiny") / branch_dir(props["branch"])
        own_trees, other_trees = ((kit.tree_store, h2.trees) if host == "host1"
                                  else (h2.trees, kit.tree_store))
        assert (own_trees / tree / "Makefile").is_file(), (worker, tree)
        assert not (other_trees / tree).exists(), (worker, tree)
    # Host 2's builds reserved LLCs of host 2's own topology, under host 2's /tmp.
    for worker in HOST2_WORKERS:
        props = kit.build_properties(by_worker[worker]["buildid"])
        idx = int(worker[-1])
        assert props["llcs"] == [idx] and props["llc_cpus"] == [idx]
        assert (h2.tmp / f"ktstr-llc-{idx}.lock").exists()
    host1 = kit.build_properties(by_worker["host1-llc0"]["buildid"])
    assert host1["llcs"] == [0] and host1["llc_cpus"] == [0, 1] and host1["make_jobs"] == 2
