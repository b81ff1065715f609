"""A second "host" on this machine: a network namespace joined to this one by a veth pair.

``NetnsHost.create()`` runs (argv lists, no shell)::

    ip netns add ktci-<id>
    ip link add ktci<id>h type veth peer name ktci<id>n netns ktci-<id>
    ip addr add 169.254.<n>.1/30 dev ktci<id>h ; ip link set ktci<id>h up
    ip -n ktci-<id> addr add 169.254.<n>.2/30 dev ktci<id>n ; ... up ; lo up

Addresses are link-local and exist only on that pair: the root namespace gets
``.1`` (the master binds its PB port there), the namespace gets ``.2`` and has
no other interface but its own loopback, so nothing in it reaches this
machine's loopback or any other network. ``destroy()`` kills every process
left in the namespace, deletes the veth (its peer goes with it) and the
namespace; it is idempotent and the fixtures call it on failure too.

Processes enter the host with :meth:`NetnsHost.argv`::

    nsenter --net=/run/netns/NS -- unshare --mount --propagation private --
        python -m tests.support.netns mounts --bind SRC:DST ... -- CMD...

``nsenter --net`` rather than ``ip netns exec``: the latter also remounts
``/sys`` for the namespace, which hides ``/sys/fs/cgroup`` and with it the
cpuset build sandbox that a real second host has. The private mount
namespace gives the second host what a real one has of its own: a ``/tmp``
(so ktstr's ``/tmp/ktstr-llc-N.lock`` files are per host, as on two
machines) and the per-branch tree store at the path the master's settings
name. Namespaces split the network and these mounts only: the rest of the
filesystem, the venv and the master's bare repository stay shared, which is
how the second host's workers fetch from the master host's repository.

The ``mounts`` subcommand (run inside the new mount namespace only) bind-mounts
each ``SRC:DST`` in order (recursively, so an earlier bind inside ``SRC``
comes along) and then ``exec``\\ s the command.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

NETNS_DIR = Path("/run/netns")


def _run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def used_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks of every address on this machine's root namespace."""
    out = _run(["ip", "-4", "-o", "addr", "show"]).stdout
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return nets


def pick_subnet() -> ipaddress.IPv4Network:
    """A free link-local /30 (169.254.100.0/24-169.254.199.0/24 range, never .169.254)."""
    used = used_networks()
    routes = _run(["ip", "-4", "route", "show", "table", "all"]).stdout
    for _ in range(200):
        third = 100 + int.from_bytes(os.urandom(1), "little") % 100
        fourth = (int.from_bytes(os.urandom(1), "little") % 64) * 4
        net = ipaddress.ip_network(f"169.254.{third}.{fourth}/30")
        if any(net.overlaps(u) for u in used) or f"169.254.{third}." in routes:
            continue
        return net
    raise RuntimeError("no free 169.254.x.x/30 for the test's veth pair")


@dataclass
class NetnsHost:
    """One network namespace and the veth pair that joins it to the root namespace."""

    name: str
    host_if: str
    ns_if: str
    subnet: ipaddress.IPv4Network
    created: list[str] = field(default_factory=list)  # what destroy() has to undo

    @property
    def host_addr(self) -> str:
        """The root namespace's end of the pair (where the master listens)."""
        return str(self.subnet.network_address + 1)

    @property
    def ns_addr(self) -> str:
        """The second host's own address."""
        return str(self.subnet.network_address + 2)

    @classmethod
    def create(cls) -> NetnsHost:
        tag = uuid.uuid4().hex[:6]
        # Interface names are limited to 15 characters (IFNAMSIZ).
        host = cls(f"ktci-{tag}", f"ktci{tag}h", f"ktci{tag}n", pick_subnet())
        try:
            host._setup()
        except BaseException:
            host.destroy()
            raise
        return host

    def _setup(self) -> None:
        plen = self.subnet.prefixlen
        _run(["ip", "netns", "add", self.name])
        self.created.append("netns")
        _run(["ip", "link", "add", self.host_if, "type", "veth",
              "peer", "name", self.ns_if, "netns", self.name])
        self.created.append("veth")
        _run(["ip", "addr", "add", f"{self.host_addr}/{plen}", "dev", self.host_if])
        _run(["ip", "link", "set", self.host_if, "up"])
        _run(["ip", "-n", self.name, "addr", "add", f"{self.ns_addr}/{plen}", "dev", self.ns_if])
        _run(["ip", "-n", self.name, "link", "set", self.ns_if, "up"])
        _run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        # Both ends must be up before the first packet passes.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.ping_ok():
                return
            time.sleep(0.1)
        raise RuntimeError(f"veth pair {self.host_if}/{self.ns_if} does not pass traffic")

    def ping_ok(self) -> bool:
        """A TCP connection from the namespace to a listener on the host side of the pair."""
        with socket.socket() as lsock:
            lsock.bind((self.host_addr, 0))
            lsock.listen(1)
            port = lsock.getsockname()[1]
            code = ("import socket, sys; s = socket.create_connection((sys.argv[1], "
                    "int(sys.argv[2])), timeout=2); s.close()")
            res = _run(["nsenter", f"--net={NETNS_DIR / self.name}", "--",
                        sys.executable, "-c", code, self.host_addr, str(port)], check=False)
            return res.returncode == 0

    # -- running things on the second host ------------------------------------

    def argv(self, cmd: Sequence[str], *, binds: Sequence[tuple[Path, Path]] = ()) -> list[str]:
        """``cmd`` in this network namespace and a private mount namespace with ``binds``."""
        inner = [sys.executable, "-m", "tests.support.netns", "mounts"]
        for src, dst in binds:
            inner += ["--bind", f"{src}:{dst}"]
        return ["nsenter", f"--net={NETNS_DIR / self.name}", "--",
                "unshare", "--mount", "--propagation", "private", "--",
                *inner, "--", *cmd]

    def net_inode(self) -> int:
        """The namespace's inode, to compare with ``/proc/<pid>/ns/net``."""
        return os.stat(NETNS_DIR / self.name).st_ino

    def pids(self) -> list[int]:
        """Processes whose network namespace is this one."""
        if "netns" not in self.created:
            return []
        res = _run(["ip", "netns", "pids", self.name], check=False)
        return [int(p) for p in res.stdout.split() if p.isdigit()]

    # -- teardown ------------------------------------------------------------------

    def destroy(self) -> None:
        """Kill what still runs inside, delete the veth pair and the namespace."""
        # Everything in the namespace was started by this test: workers, their
        # builds, helpers. Deleting the namespace would not stop them.
        pids = self.pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + (10 if sig == signal.SIGTERM else 5)
            while time.monotonic() < deadline and (pids := self.pids()):
                time.sleep(0.1)
            if not pids:
                break
        if "veth" in self.created:
            _run(["ip", "link", "del", self.host_if], check=False)
            self.created.remove("veth")
        if "netns" in self.created:
            _run(["ip", "netns", "del", self.name], check=False)
            self.created.remove("netns")

    def leftovers(self) -> list[str]:
        """What of this host still exists (empty after a clean destroy)."""
        out = []
        if (NETNS_DIR / self.name).exists() or self.name in _run(["ip", "netns", "list"]).stdout:
            out.append(f"netns {self.name}")
        if _run(["ip", "link", "show", self.host_if], check=False).returncode == 0:
            out.append(f"link {self.host_if}")
        addrs = _run(["ip", "-4", "-o", "addr", "show"]).stdout
        if f" {self.host_addr}/" in addrs:
            out.append(f"address {self.host_addr}")
        return out


def private_tmp_binds(host_tmp: Path, *keep: Path) -> list[tuple[Path, Path]]:
    """Binds that give the second host its own ``/tmp`` while every ``keep`` stays reachable.

    Each kept directory under ``/tmp`` (the test's directory; the checkout and
    its venv, which CI may clone under ``/tmp``) is first bound into ``host_tmp``
    at the same relative path; ``host_tmp`` then covers ``/tmp``.
    """
    binds: list[tuple[Path, Path]] = []
    kept: list[Path] = []
    for k in sorted({p.resolve() for p in keep}, key=lambda p: len(p.parts)):
        if any(k == r or r in k.parents for r in kept):
            continue  # inside a directory that is already kept
        try:
            rel = k.relative_to("/tmp")
        except ValueError:
            continue  # elsewhere: covering /tmp does not hide it
        kept.append(k)
        binds.append((k, host_tmp / rel))
    binds.append((host_tmp, Path("/tmp")))
    return binds


@pytest.fixture
def netns_host() -> Iterator[NetnsHost]:
    """A second host, torn down after the test; the test fails if anything is left."""
    host = NetnsHost.create()
    try:
        yield host
    finally:
        host.destroy()
    left = host.leftovers()
    assert not left, f"network namespace test left behind: {left}"


# -- the in-namespace helper ------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.netns")
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mounts", help="bind-mount SRC:DST pairs, then exec the command")
    m.add_argument("--bind", action="append", default=[], metavar="SRC:DST")
    m.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        parser.error("no command after --")
    # Refuse to touch the caller's mounts: only a private namespace (unshare --mount)
    # may be changed, or the binds would cover /tmp for the whole machine.
    if os.stat("/proc/self/ns/mnt").st_ino == os.stat(f"/proc/{os.getppid()}/ns/mnt").st_ino:
        print("tests.support.netns: refusing to mount outside a private mount namespace", file=sys.stderr)
        return 2
    for pair in args.bind:
        src, _, dst = pair.partition(":")
        Path(dst).mkdir(parents=True, exist_ok=True)
        res = subprocess.run(["mount", "--rbind", src, dst], capture_output=True, text=True)
        if res.returncode != 0:
            print(f"tests.support.netns: mount --rbind {src} {dst}: {res.stderr.strip()}", file=sys.stderr)
            return 1
    os.execvp(cmd[0], cmd)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
