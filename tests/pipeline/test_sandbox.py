"""Build sandbox on this host's real cgroups (v1 cpuset; v2 paths against the real unified mount).

This machine is hybrid: the cpuset controller is bound to the v1 hierarchy at
/sys/fs/cgroup/cpuset and the cgroup2 mount at /sys/fs/cgroup/unified has no
cpuset (it cannot get one while v1 holds it). So:

- v1 creation, confinement, order, teardown, sweep, permission degrade: real.
- v2 precondition/degrade selection: against the real cgroup2 mount (statfs
  magic, root refusal, missing cpuset controller in a real child cgroup).
- v2 creation sequence (subtree_control, writes, read-back, narrowing, drain
  to root): against a directory laid out like cgroupfs, because no cgroup2
  cpuset can exist on this kernel while v1 owns the controller.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ktstr_steps import cgroups
from ktstr_steps.cgroups import CgroupEnv, DegradeKind
from ktstr_steps.errors import KtstrError
from ktstr_steps.sandbox import BuildSandbox

V1_ROOT = Path("/sys/fs/cgroup/cpuset")
UNIFIED = Path("/sys/fs/cgroup/unified")


def _rm_cgroup_tree(path: Path, drain_to: Path) -> None:
    if not path.exists():
        return
    for child in path.iterdir():
        if child.is_dir():
            _rm_cgroup_tree(child, drain_to)
    for pid in (path / "cgroup.procs").read_text().split() if (path / "cgroup.procs").exists() else []:
        try:
            (drain_to).write_text(pid)
        except OSError:
            pass
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


@pytest.fixture
def v1_parent(request: pytest.FixtureRequest) -> Path:
    """A private v1 cpuset parent, so sweeps and listings never see real builds."""
    p = V1_ROOT / f"ktstr-ci-test-{os.getpid()}-{time.time_ns()}"
    p.mkdir()
    # v1: a child cpuset starts empty and must be given cpus/mems before use.
    (p / "cpuset.cpus").write_text((V1_ROOT / "cpuset.cpus").read_text())
    (p / "cpuset.mems").write_text((V1_ROOT / "cpuset.mems").read_text())
    yield p
    _rm_cgroup_tree(p, V1_ROOT / "cgroup.procs")


def _waiting_child() -> subprocess.Popen:
    """A process that reports its own cpus/cgroup only after we moved it."""
    return subprocess.Popen(
        ["sh", "-c", "read x; cat /proc/self/status /proc/self/cgroup"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _status_field(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{name} not in output:\n{text}")


def test_v1_real_sandbox_confines_child_and_teardown_removes(v1_parent: Path) -> None:
    child = _waiting_child()
    try:
        box = BuildSandbox.create([0], [0], hard=True, pid=child.pid, env=CgroupEnv(v1_parent=v1_parent))
        assert box.kind == "v1"
        assert box.path is not None and box.path.parent == v1_parent
        assert box.path.name.startswith("ktstr-build-") and box.path.name.endswith(f"-{child.pid}")
        assert (box.path / "cpuset.cpus").read_text().strip() == "0"
        assert (box.path / "cpuset.mems").read_text().strip() == "0"
        out, _ = child.communicate("go\n", timeout=10)
    finally:
        child.kill()
        child.wait()
    assert _status_field(out, "Cpus_allowed_list") == "0"
    rel = "/" + str(box.path.relative_to(V1_ROOT))
    assert f"cpuset:{rel}" in out
    box.teardown()
    assert not box.path.exists()
    box.teardown()  # idempotent
    assert box.to_json() == {"kind": "v1", "path": str(box.path)}


def test_default_env_selects_v1_on_this_hybrid_host() -> None:
    """No seams: statfs says /sys/fs/cgroup is not cgroup2, so v1 cpuset is found via mountinfo."""
    env = CgroupEnv()
    assert env.v2_parent_or_degrade() is DegradeKind.NO_CGROUP_V2
    assert env.v1_mount() == (V1_ROOT, "/")
    child = _waiting_child()
    try:
        box = BuildSandbox.create([1], [0], hard=False, pid=child.pid)
        assert box.kind == "v1" and box.path is not None
        assert box.path.parent == V1_ROOT  # /proc/self/cgroup says 3:cpuset:/
        out, _ = child.communicate("go\n", timeout=10)
        assert _status_field(out, "Cpus_allowed_list") == "1"
    finally:
        child.kill()
        child.wait()
        box.teardown()
    assert not box.path.exists()


def test_join_moves_calling_process_and_teardown_returns_it_to_parent(v1_parent: Path) -> None:
    code = f"""
import os, sys
from pathlib import Path
from ktstr_steps.cgroups import CgroupEnv
from ktstr_steps.sandbox import BuildSandbox
box = BuildSandbox.create([0], [0], hard=True, pid=0 + 999999999, env=CgroupEnv(v1_parent=Path({str(v1_parent)!r})))
"""
    # pid 999999999 does not exist: attaching it is an unclassified (ESRCH) error,
    # fatal even without a cap, and the half-made child must be gone.
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0 and "No such process" in r.stderr
    assert [p.name for p in v1_parent.iterdir() if p.name.startswith("ktstr-build-")] == []

    code = f"""
import os
from pathlib import Path
from ktstr_steps.cgroups import CgroupEnv
from ktstr_steps.sandbox import BuildSandbox
box = BuildSandbox.create([0, 1], [0], hard=False, env=CgroupEnv(v1_parent=Path({str(v1_parent)!r})))
print(open('/proc/self/cgroup').read().count(box.path.name))
print(sorted(os.sched_getaffinity(0)))
box.teardown()
print([l for l in open('/proc/self/cgroup').read().splitlines() if ':cpuset:' in l][0])
print(box.path.exists())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = r.stdout.splitlines()
    assert lines[0] == "1" and lines[1] == "[0, 1]"
    # v1 teardown parks the process in the PARENT cgroup, not the hierarchy root.
    assert lines[2].endswith(":cpuset:/" + v1_parent.name)
    assert lines[3] == "False"


def test_write_order_cpus_mems_procs_on_real_v1(v1_parent: Path) -> None:
    calls: list[str] = []

    def spy(path: Path, text: str) -> None:
        calls.append(path.name)
        cgroups.write_cgroup_file(path, text)

    child = _waiting_child()
    try:
        box = BuildSandbox.create([0, 1], [0], hard=True, pid=child.pid,
                                  env=CgroupEnv(v1_parent=v1_parent, writer=spy))
        assert calls == ["cpuset.cpus", "cpuset.mems", "cgroup.procs"]
        assert (box.path / "cgroup.procs").read_text().split() == [str(child.pid)]
    finally:
        child.kill()
        child.wait()
    box.teardown()
    assert not box.path.exists()


def test_no_cpuset_anywhere_degrades_silently_without_cap(capfd: pytest.CaptureFixture) -> None:
    # Real cgroup2 mount as the v2 root (the caller sits at 0::/), v1 disabled.
    env = CgroupEnv(cgroup_root=UNIFIED, use_v1=False)
    box = BuildSandbox.create([0], [0], hard=False, env=env)
    assert box.kind == "none" and box.path is None
    assert box.degraded == [DegradeKind.ROOT_CGROUP_REFUSED]
    box.teardown()
    assert capfd.readouterr().err == ""  # ktstr: silent without a cap


def test_no_cpuset_with_cap_errors_with_four_remedies() -> None:
    env = CgroupEnv(use_v1=False)  # the real /sys/fs/cgroup is a tmpfs here
    with pytest.raises(KtstrError) as ei:
        BuildSandbox.create([0], [0], hard=True, env=env)
    msg = str(ei.value)
    assert msg.startswith("--cpu-cap: cgroup v2 not mounted at /sys/fs/cgroup")
    assert "This host cannot enforce the resource budget." in msg
    for n in ("1.", "2.", "3.", "4."):
        assert f"  {n} " in msg
    assert "Delegate=cpuset cpu" in msg and "cgroup.subtree_control" in msg
    assert "v1 cpuset" in msg and "Drop --cpu-cap" in msg
    assert ei.value.kind == "sandbox-degraded"


def test_v1_missing_mount_with_cap_names_both_flavours(tmp_path: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n")
    env = CgroupEnv(mountinfo=mi)
    with pytest.raises(KtstrError) as ei:
        BuildSandbox.create([0], [0], hard=True, env=env)
    assert "cgroup v2 not mounted" in str(ei.value)
    assert "no cgroup v1 cpuset hierarchy is mounted either" in str(ei.value)


def test_v2_real_unified_child_without_cpuset_controller(tmp_path: Path) -> None:
    """A real cgroup2 child cgroup (not root): step C reads its real cgroup.controllers."""
    cg = UNIFIED / f"ktstr-ci-test-{os.getpid()}-{time.time_ns()}"
    cg.mkdir()
    try:
        fake_self = tmp_path / "cgroup"
        fake_self.write_text(f"3:cpuset:/\n0::/{cg.name}\n")
        env = CgroupEnv(cgroup_root=UNIFIED, proc_cgroup=fake_self, use_v1=False)
        assert env.v2_parent_or_degrade() == cg
        assert "cpuset" not in (cg / "cgroup.controllers").read_text().split()
        box = BuildSandbox.create([0], [0], hard=False, env=env)
        assert box.kind == "none" and box.degraded == [DegradeKind.NO_CPUSET_CONTROLLER]
        with pytest.raises(KtstrError, match="parent cgroup does not expose cpuset controller"):
            BuildSandbox.create([0], [0], hard=True, env=env)
        assert [p for p in cg.iterdir() if p.is_dir()] == []
    finally:
        cg.rmdir()


def test_v2_unusable_falls_through_to_v1(v1_parent: Path) -> None:
    child = _waiting_child()
    try:
        env = CgroupEnv(cgroup_root=UNIFIED, v1_parent=v1_parent)
        box = BuildSandbox.create([0], [0], hard=True, pid=child.pid, env=env)
        assert box.kind == "v1" and box.path.parent == v1_parent
    finally:
        child.kill()
        child.wait()
    box.teardown()


def test_v1_permission_denied_is_a_degrade(v1_parent: Path) -> None:
    """A real EACCES: mkdir under the root-owned cpuset as user nobody."""
    code = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from pathlib import Path
from ktstr_steps.cgroups import CgroupEnv
from ktstr_steps.sandbox import BuildSandbox
from ktstr_steps.errors import KtstrError
# imports done as root (the venv's interpreter lives under /root), then drop to nobody
os.setgroups([]); os.setgid(65534); os.setuid(65534)
env = CgroupEnv(v1_parent=Path({str(v1_parent)!r}))
box = BuildSandbox.create([0], [0], hard=False, env=env)
print(box.kind, [d.name for d in box.degraded])
try:
    BuildSandbox.create([0], [0], hard=True, env=env)
except KtstrError as e:
    print(str(e).splitlines()[0])
"""
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd="/",
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "none ['NO_CGROUP_V2', 'PERMISSION_DENIED']"
    assert out[1].startswith("--cpu-cap: cgroup v2 not mounted at /sys/fs/cgroup; insufficient permission")
    assert [p for p in v1_parent.iterdir() if p.is_dir()] == []


# ----------------------------------------------------------------- v2 sequence


def _fake_v2(tmp_path: Path) -> tuple[CgroupEnv, Path, list[tuple[str, str]]]:
    root = tmp_path / "cg2"
    parent = root / "build.slice"
    parent.mkdir(parents=True)
    (root / "cgroup.procs").write_text("")
    (parent / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (parent / "cgroup.subtree_control").write_text("")
    self_cg = tmp_path / "self-cgroup"
    self_cg.write_text("0::/build.slice\n")
    writes: list[tuple[str, str]] = []

    def writer(path: Path, text: str) -> None:
        writes.append((path.name, text))
        if path.name == "cgroup.procs":  # cgroup.procs appends a member, like the kernel
            with open(path, "a") as f:
                f.write(text + "\n")
        else:
            path.write_text(text + "\n")

    env = CgroupEnv(
        cgroup_root=root,
        proc_cgroup=self_cg,
        fs_magic=lambda p: cgroups.CGROUP2_SUPER_MAGIC if p == root else None,
        use_v1=False,
        writer=writer,
        rmdir=shutil.rmtree,
    )
    return env, parent, writes


def test_v2_sequence_and_drain_to_root(tmp_path: Path) -> None:
    env, parent, writes = _fake_v2(tmp_path)
    box = BuildSandbox.create([0, 1, 2, 3, 8], [0], hard=True, pid=4242, env=env)
    assert box.kind == "v2" and box.path.parent == parent
    assert box.path.name.endswith("-4242")
    assert writes == [
        ("cgroup.subtree_control", "+cpuset"),
        ("cpuset.cpus", "0-3,8"),
        ("cpuset.mems", "0"),
        ("cgroup.procs", "4242"),
    ]
    box.teardown()
    # As ktstr does: v2 drains into the ROOT cgroup.procs, then removes the child.
    assert writes[-1] == ("cgroup.procs", "4242")
    assert (env.cgroup_root / "cgroup.procs").read_text().split() == ["4242"]
    assert not box.path.exists()


def test_v2_narrowed_cpus_warns_without_cap_errors_with(tmp_path: Path, capfd) -> None:
    env, parent, writes = _fake_v2(tmp_path)
    inner = env.writer

    def narrowing(path: Path, text: str) -> None:
        inner(path, text)
        if path.name == "cpuset.cpus":
            (path.parent / "cpuset.cpus.effective").write_text("0\n")

    env.writer = narrowing
    box = BuildSandbox.create([0, 1], [0], hard=False, pid=4242, env=env)
    err = capfd.readouterr().err
    assert "warning: tag=resource_budget.cpuset_cpus_degraded" in err
    assert "requested=0-1 effective=0" in err
    assert box.kind == "v2"
    box.teardown()

    writes.clear()
    with pytest.raises(KtstrError, match=r"--cpu-cap: cpuset.cpus narrowed by parent cgroup "
                       r"\(requested 0-1, effective 0\)"):
        BuildSandbox.create([0, 1], [0], hard=True, pid=4242, env=env)
    # removed before the error, and no task was ever attached
    assert [p for p in parent.iterdir() if p.is_dir()] == []
    assert ("cgroup.procs", "4242") not in writes


def test_v2_subtree_control_errno_classification(tmp_path: Path) -> None:
    env, parent, _ = _fake_v2(tmp_path)
    for err_no, kind in ((errno.EBUSY, DegradeKind.SUBTREE_CONTROL_REFUSED),
                         (errno.EACCES, DegradeKind.PERMISSION_DENIED)):
        def failing(path: Path, text: str, e=err_no) -> None:
            raise OSError(e, os.strerror(e))
        env.writer = failing
        assert BuildSandbox.create([0], [0], hard=False, env=env).degraded == [kind]
    def einval(path: Path, text: str) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")
    env.writer = einval
    # unclassified: fatal even without a cap
    with pytest.raises(KtstrError, match="write \\+cpuset"):
        BuildSandbox.create([0], [0], hard=False, env=env)


def test_v2_root_cgroup_and_no_v2_line(tmp_path: Path) -> None:
    self_cg = tmp_path / "c"
    for text, kind in (("0::/\n", DegradeKind.ROOT_CGROUP_REFUSED),
                       ("3:cpuset:/\n", DegradeKind.NO_CGROUP_V2)):
        self_cg.write_text(text)
        env = CgroupEnv(cgroup_root=UNIFIED, proc_cgroup=self_cg, use_v1=False)
        assert env.v2_parent_or_degrade() is kind


def test_v1_mount_root_is_stripped_for_bind_mounted_hierarchies(tmp_path: Path) -> None:
    mi = tmp_path / "mi"
    mi.write_text("34 31 0:31 /docker/abc /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n")
    pc = tmp_path / "pc"
    pc.write_text("3:cpuset:/docker/abc/inner\n0::/\n")
    env = CgroupEnv(mountinfo=mi, proc_cgroup=pc)
    assert env.v1_parent_or_degrade() == Path("/sys/fs/cgroup/cpuset/inner")


def test_orphan_sweep_removes_only_old_dead_owner_dirs(v1_parent: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    old = time.time() - 25 * 3600
    dead_old = v1_parent / f"ktstr-build-1-{dead.pid}"
    dead_young = v1_parent / f"ktstr-build-2-{dead.pid}"
    live_old = v1_parent / f"ktstr-build-3-{os.getpid()}"
    other = v1_parent / "not-ours"
    for d in (dead_old, dead_young, live_old, other):
        d.mkdir()
    for d in (dead_old, live_old, other):
        os.utime(d, (old, old))
    removed = cgroups.sweep_dir(v1_parent, v1_parent / "cgroup.procs")
    assert removed == [dead_old]
    assert not dead_old.exists()
    assert dead_young.exists() and live_old.exists() and other.exists()
    # the sweep also runs on every create
    os.utime(dead_young, (old, old))
    child = _waiting_child()
    try:
        box = BuildSandbox.create([0], [0], hard=False, pid=child.pid, env=CgroupEnv(v1_parent=v1_parent))
    finally:
        child.kill()
        child.wait()
    assert not dead_young.exists() and live_old.exists()
    box.teardown()
    # a holder's stale sandbox is removed regardless of age once its pid is dead
    young = v1_parent / f"ktstr-build-9-{dead.pid}"
    young.mkdir()
    assert cgroups.remove_stale_sandbox(young, "v1")
    assert not young.exists()
    assert not cgroups.remove_stale_sandbox(live_old, "v1") and live_old.exists()


def test_write_timeout_is_enforced(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(OSError) as ei:
        cgroups.write_cgroup_file(fifo, "x", timeout=0.3)  # open(2) blocks: no reader
    assert ei.value.errno == errno.ETIMEDOUT
    assert 0.25 <= time.monotonic() - start < 2
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # unblock the abandoned writer thread
    os.close(fd)


def test_empty_sets_are_rejected() -> None:
    with pytest.raises(KtstrError, match="at least one CPU"):
        BuildSandbox.create([], [0], hard=False)
