"""LLC groups → worker specs, CPU remapping of faked topologies, and the pinned launcher."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import settings
from settings import worker_specs
from tests.support.paths import REPO
from tests.support.servicekit import write_fake_sysfs


def test_groups_by_llc(tmp_path: Path) -> None:
    root = write_fake_sysfs(tmp_path / "sys", [[0, 1], [2, 3]])
    groups = worker_specs.llc_groups(root)
    assert [(g.index, g.cpus, g.node) for g in groups] == [(0, (0, 1), 0), (1, (2, 3), 0)]


def test_groups_without_cache_info(tmp_path: Path) -> None:
    cpu = tmp_path / "devices" / "system" / "cpu"
    for c in range(3):
        (cpu / f"cpu{c}").mkdir(parents=True)
    (cpu / "online").write_text("0-2\n")
    [g] = worker_specs.llc_groups(tmp_path)
    assert g.cpus == (0, 1, 2)


def test_groups_unreadable(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="cannot read this host's LLC topology: sysfs unreadable"):
        worker_specs.llc_groups(tmp_path)


def test_llc_groups_honours_ktstr_sysfs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTSTR_SYSFS_ROOT", str(write_fake_sysfs(tmp_path, [[0], [1], [2, 3]])))
    assert [g.cpus for g in worker_specs.llc_groups()] == [(0,), (1,), (2, 3)]
    monkeypatch.setenv("KTSTR_SYSFS_ROOT", str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match="KTSTR_SYSFS_ROOT"):
        worker_specs.llc_groups()


def test_real_host_groups_cover_online_cpus() -> None:
    from ktstr_steps.cpulist import parse_cpulist

    groups = worker_specs.llc_groups()
    assert [g.index for g in groups] == list(range(len(groups)))
    online = parse_cpulist(Path("/sys/devices/system/cpu/online").read_text())
    assert sorted(c for g in groups for c in g.cpus) == online
    # the default root is the real /sys
    assert worker_specs.llc_groups(Path("/sys")) == groups


def test_map_cpus() -> None:
    assert worker_specs.map_cpus((0, 1), {0, 1}) == ((0, 1), None)
    pinned, note = worker_specs.map_cpus((1,), {0, 1})
    assert pinned == (1,) and note is None
    pinned, note = worker_specs.map_cpus((4, 5, 6, 7), {0, 1})
    assert pinned == (0, 1)
    assert "recorded LLC CPUs 4-7 are not all usable" in note and "pinned to 0-1" in note
    pinned, _ = worker_specs.map_cpus((3,), {0, 1})
    assert pinned == (1,)  # 3 mod 2


def settings_for(tmp_path: Path, extra: str = "") -> settings.Settings:
    p = tmp_path / "s.toml"
    p.write_text('[master]\nhost = "box"\n' + extra)
    return settings.load(p, root=tmp_path)


def test_auto_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTSTR_SYSFS_ROOT", str(write_fake_sysfs(tmp_path / "fs", [[0], [1]])))
    s = settings_for(tmp_path)
    specs = worker_specs.worker_specs(s)
    assert [x.name for x in specs] == ["box-llc0", "box-llc1"]
    assert [x.pin_cpus for x in specs] == [(0,), (1,)]
    assert specs[1].basedir == tmp_path / "var/workers/box-llc1"
    assert specs[1].password_file == tmp_path / "var/secrets/workers/box-llc1.pass"
    props = specs[1].properties(s)
    assert props["llc_cpus"] == "1" and props["llc_ncpus"] == 1 and props["host"] == "box"


def test_listed_specs(tmp_path: Path) -> None:
    s = settings_for(tmp_path, """
[workers]
mode = "list"
[[workers.list]]
name = "box-a"
host = "box"
llc_index = 0
cpus = "0"
[[workers.list]]
name = "far-llc3"
host = "far"
llc_index = 3
cpus = "24-31"
""")
    local, remote = worker_specs.worker_specs(s)
    assert local.local and local.pin_cpus == (0,)
    assert not remote.local and remote.pin_cpus is None and remote.cpus == tuple(range(24, 32))


def launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.launch", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=30)


def test_launcher_pins_then_execs() -> None:
    code = "import os; print(sorted(os.sched_getaffinity(0)), os.getppid())"
    proc = launch("--cpus", "1", "--", sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("[1] ")
    proc = launch("--", sys.executable, "-c", code)  # no --cpus: not pinned
    assert proc.returncode == 0


def test_launcher_errors() -> None:
    proc = launch("--cpus", "5-2", "--", "true")
    assert proc.returncode == 2 and "--cpus: descending range" in proc.stderr
    proc = launch("--cpus", "999", "--", "true")
    assert proc.returncode == 1 and "cannot pin to CPUs 999" in proc.stderr
    proc = launch("--cpus", "0")
    assert proc.returncode == 2 and "no command given" in proc.stderr
    proc = launch("--cpus", "0", "--", "/nonexistent/cmd")
    assert proc.returncode == 127 and "cannot run /nonexistent/cmd" in proc.stderr
