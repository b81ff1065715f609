"""During make, the build's processes are in the sandbox with the planned CPUs; after, nothing is left.

The fake tree's ``CONFIG_KTSTR_FAKE_SLEEP`` makes make run ``sleep N`` as its
own child, so the test can look at a real make child while it runs: its
``Cpus_allowed_list`` and its cgroup. Both the one-process ``kernel build``
and the holder-driven phase commands (what the Buildbot steps run) are checked.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from ktstr_steps import flock
from ktstr_steps.cpulist import parse_cpulist
from tests.support.fakekernel import make_fake_kernel

SLEEP = 4


def find_make_sleep(proc: subprocess.Popen, timeout: float = 60) -> psutil.Process:
    """The ``sleep`` that make runs, a descendant of ``proc``.

    A command that ends first (a busy LLC, a sandbox it could not make) stops
    the wait at once with its own error: its zombie has no children, so waiting
    out the timeout would only hide why.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(
                f"the command ended (exit {proc.returncode}) before make ran sleep: {err or out}"
            )
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                if child.name() == "sleep" and child.parent() and child.parent().name() == "make":
                    return child
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.05)
    raise AssertionError(f"make's sleep child never appeared in {timeout:g}s")


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{name} not in /proc/{pid}/status")


def cgroup_paths(pid: int) -> dict[str, str]:
    """controller list → path, from /proc/PID/cgroup (v1 lines and the v2 ``0::`` line)."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        out[controllers] = path
    return out


def sandbox_dirs(pid: int) -> list[Path]:
    """ktstr-build-<ns>-<pid> cgroups of one owner (other builds may run on this host)."""
    return [
        p
        for base in (Path("/sys/fs/cgroup/cpuset"), Path("/sys/fs/cgroup"))
        if base.is_dir()
        for p in base.rglob(f"ktstr-build-*-{pid}")
        if p.is_dir()
    ]


def llc_holders() -> list[int]:
    return [h.pid for p in Path("/tmp").glob("ktstr-llc-*.lock") for h in flock.holders(p)]


@pytest.fixture
def slow_tree(tmp_path: Path) -> tuple[Path, Path]:
    tree = make_fake_kernel(tmp_path / "linux")
    extra = tmp_path / "slow.kconfig"
    extra.write_text(f"CONFIG_KTSTR_FAKE_SLEEP={SLEEP}\n")
    return tree, extra


def test_kernel_build_make_children_run_in_the_sandbox(slow_tree):
    tree, extra = slow_tree
    p = subprocess.Popen(
        ["ktstr-ci", "kernel", "build", "--source", str(tree), "--extra-kconfig", str(extra),
         "--cpu-cap", "1", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        child = find_make_sleep(p)
        allowed = parse_cpulist(status_field(child.pid, "Cpus_allowed_list"))
        groups = cgroup_paths(child.pid)
        assert p.pid in llc_holders(), "the build holds its LLC lock while make runs"
    finally:
        out, err = p.communicate(timeout=120)
    res = json.loads(out)
    assert p.returncode == 0, err
    assert allowed == res["llc_cpus"] and len(allowed) == 1 == res["make_jobs"]
    sandboxed = [path for path in groups.values() if "ktstr-build-" in path]
    assert sandboxed, f"make's child is not in a ktstr-build cgroup: {groups}"
    assert sandbox_dirs(p.pid) == [], "the sandbox cgroup is removed after the build"
    assert p.pid not in llc_holders()


def run(*argv: str) -> dict:
    p = subprocess.run(["ktstr-ci", *argv], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_holder_driven_phases_build_inside_the_holder_sandbox(slow_tree, tmp_path: Path):
    tree, extra = slow_tree
    state = str(tmp_path / "state.json")
    name = "phases-test"
    acq = run("holder", "acquire", "--name", name, "--cpu-cap", "1", "--json")
    holder_pid = acq["pid"]
    try:
        assert holder_pid in llc_holders()
        run("holder", "lock-source", "--name", name, "--source", str(tree), "--json")
        look = run("phase", "lookup", "--state", state, "--source", str(tree),
                   "--extra-kconfig", str(extra), "--json")  # fmt: skip
        assert look["hit"] is False
        run("phase", "configure", "--state", state, "--holder", name, "--json")
        p = subprocess.Popen(
            ["ktstr-ci", "phase", "make", "--state", state, "--holder", name, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            child = find_make_sleep(p)
            allowed = parse_cpulist(status_field(child.pid, "Cpus_allowed_list"))
            groups = cgroup_paths(child.pid)
        finally:
            out, err = p.communicate(timeout=120)
        made = json.loads(out)
        assert p.returncode == 0, err
        assert allowed == acq["plan"]["cpus"] and made["jobs"] == acq["plan"]["make_jobs"]
        assert acq["sandbox"]["path"] and any(
            acq["sandbox"]["path"].endswith(path) for path in groups.values() if path != "/"
        ), (groups, acq["sandbox"])
        for phase in ("validate", "compile-commands", "store"):
            run("phase", phase, "--state", state, "--json")
        summary = run("phase", "summary", "--state", state, "--json")
        assert summary["outcome"] == "cached" and summary["llc_cpus"] == acq["plan"]["cpus"]
    finally:
        rel = run("holder", "release", "--name", name, "--json")
    assert rel["released"] == ["source-lock", "sandbox", "llc-locks"]
    assert not psutil.pid_exists(holder_pid) or psutil.Process(holder_pid).status() == "zombie"
    assert sandbox_dirs(holder_pid) == [] and holder_pid not in llc_holders()
