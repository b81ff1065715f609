"""``[matrix]`` settings: parsing, validation errors that name the key, and what the
master configuration gets from them; version specs and their resolution (pure parts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from buildbot.config.errors import ConfigErrors
from buildbot.process.properties import Property

import settings
from ktstr_steps.buildsteps.checkout import KernelCheckout
from ktstr_steps.buildsteps.factory import Checkout, Lookup, ReleaseSource, kernel_build_factory
from ktstr_steps.buildsteps.lookup import CacheLookup, RevisionLookup, not_cache_hit
from ktstr_steps.buildsteps.matrix_cell import MatrixLookup
from ktstr_steps.buildsteps.matrix_run import classify_cell, summary_text
from ktstr_steps.buildsteps.record import Record
from ktstr_steps.buildsteps.release import Release
from ktstr_steps.buildsteps.remote_lookup import RemoteLookup
from ktstr_steps.buildsteps.reserve import Reserve
from ktstr_steps.buildsteps.sourcelock import SourceLock
from ktstr_steps.errors import KtstrError
from ktstr_steps.kernelorg import releases
from ktstr_steps.matrixspec import parse_spec, resolve_versions, unique_labels
from master import builders, matrix
from master.parts import ConfigPart
from master.schedulers import KtstrForceScheduler
from settings.worker_specs import WorkerSpec

ROWS = releases.parse_releases(
    b'{"releases": ['
    b'{"moniker": "mainline", "version": "6.17-rc4"},'
    b'{"moniker": "stable", "version": "6.16.3"},'
    b'{"moniker": "stable", "version": "6.15.11"},'
    b'{"moniker": "longterm", "version": "6.12.44"},'
    b'{"moniker": "longterm", "version": "6.6.103"},'
    b'{"moniker": "linux-next", "version": "next-20250905"}]}'
)


def load(tmp_path: Path, body: str) -> settings.Settings:
    p = tmp_path / "s.toml"
    p.write_text(body)
    return settings.load(p, root=tmp_path)


def specs(tmp_path: Path) -> list[WorkerSpec]:
    return [
        WorkerSpec(name=f"h-llc{i}", host="h", llc_index=i, cpus=(2 * i, 2 * i + 1), node=0,
                   basedir=tmp_path / f"w{i}", password_file=tmp_path / f"w{i}.pass",
                   pin_cpus=(2 * i, 2 * i + 1), pin_note=None)
        for i in range(2)
    ]


def test_defaults_are_on_build_recent_branches_and_download_nothing(tmp_path: Path) -> None:
    s = settings.load(settings.DEFAULT_FILE, root=tmp_path)
    m = s.matrix
    assert m.enabled is True
    # Nothing from kernel.org: the rows are the branches pushed in the last 14 days...
    assert m.versions == ("recent-branches",) and m.recent_days == 14
    assert not any(parse_spec(v).needs_releases for v in m.versions)
    # ... under the push profiles plus "default", the config nobody builds on push.
    assert m.profiles == ("tiny", "default")
    assert (m.hour, m.minute) == (3, 0)
    assert m.releases_url is None and m.mirror is None and m.cpu_cap is None
    assert m.download_cache == tmp_path / "var" / "downloads"


def test_disabled_matrix_adds_nothing(tmp_path: Path) -> None:
    s = load(tmp_path, "[matrix]\nenabled = false\n")
    assert matrix.config_part(s, specs(tmp_path)) == ConfigPart(feature="matrix")


def test_empty_profiles_are_every_push_profile_then_default(tmp_path: Path) -> None:
    s = load(tmp_path, """
[[repos]]
name = "linux"
url = "var/linux.git"
profiles = ["tiny", "tiny-preempt"]
[[repos]]
name = "next"
url = "https://example.org/next.git"
hosted = false
profiles = ["preempt", "tiny"]
[matrix]
profiles = []
""")
    assert s.matrix.profiles == ("tiny", "tiny-preempt", "preempt", "default")
    assert load(tmp_path, '[matrix]\nprofiles = ["preempt"]\n').matrix.profiles == ("preempt",)


def test_the_default_matrix_builds_recent_branches_on_the_push_builders(tmp_path: Path) -> None:
    s = settings.load(settings.DEFAULT_FILE, root=tmp_path)
    settings.ensure_secret(s.worker_password_file("h-llc0"))
    c = builders.build_config(s, specs=specs(tmp_path))
    sched = {x.name: x for x in c["schedulers"]}
    assert sched["nightly-matrix"]._config_kwargs["builderNames"] == ["matrix"]
    # Every profile of the run has a Triggerable onto that profile's builder of the repository.
    assert sched["matrix-linux-tiny"]._config_kwargs["builderNames"] == ["linux-tiny"]
    assert sched["matrix-linux-default"]._config_kwargs["builderNames"] == ["linux-default"]
    [parent] = [b for b in c["builders"] if b.name == "matrix"]
    resolve = parent.factory.steps[0].kwargs
    assert resolve["specs"] == ["recent-branches"] and resolve["recent_days"] == 14
    assert resolve["profiles"] == ["tiny", "default"]
    assert resolve["branch_patterns"] == {"linux": [".*"]}


ENABLED = """
[matrix]
enabled = true
versions = ["6.12", "6.6..6.12", "latest-stable", "mainline", "6.15-rc3", "branch:linux/for-next"]
profiles = ["tiny", "tiny-preempt"]
time = "21:45"
releases_url = "http://127.0.0.1:1/releases.json"
mirror = "http://127.0.0.1:1/pub/linux/kernel/"
download_cache = "/srv/dl"
cpu_cap = 2
"""


def test_enabled_matrix_configures_builders_and_schedulers(tmp_path: Path) -> None:
    s = load(tmp_path, ENABLED)
    m = s.matrix
    assert (m.hour, m.minute, m.cpu_cap) == (21, 45, 2)
    assert m.mirror == "http://127.0.0.1:1/pub/linux/kernel"  # trailing "/" dropped
    settings.ensure_secret(s.worker_password_file("h-llc0"))
    c = builders.build_config(s, specs=specs(tmp_path))
    workers = {w.name: w for w in c["workers"]}
    assert set(workers) >= {"h-llc0", "h-llc1", "__matrix"}
    assert type(workers["__matrix"]).__name__ == "LocalWorker"
    by_name = {b.name: b for b in c["builders"]}
    parent, cell = by_name["matrix"], by_name["matrix-cell"]
    assert parent.workernames == ["__matrix"]  # never an LLC group
    assert cell.workernames == ["h-llc0", "h-llc1"]
    assert parent.collapseRequests is False and cell.collapseRequests is False
    sched = {x.name: x for x in c["schedulers"]}
    nightly = sched["nightly-matrix"]
    assert type(nightly).__name__ == "Nightly"
    assert nightly._config_kwargs["hour"] == 21 and nightly._config_kwargs["minute"] == 45
    assert nightly._config_kwargs["builderNames"] == ["matrix"]
    assert isinstance(sched["force-matrix"], KtstrForceScheduler)  # refuses bad builders: 400
    assert sched["matrix-cells"]._config_kwargs["builderNames"] == ["matrix-cell"]
    # branch: entries build on the repository's push builders, one Triggerable per profile.
    assert sched["matrix-linux-tiny"]._config_kwargs["builderNames"] == ["linux-tiny"]
    assert sched["matrix-linux-tiny-preempt"]._config_kwargs["builderNames"] == [
        "linux-tiny-preempt"]
    # The cell factory: lookup, then record; the lookup adds the phases on a miss.
    steps = cell.factory.steps
    assert steps[0].step_class is MatrixLookup
    assert Record in [st.step_class for st in steps]
    assert not {Reserve, SourceLock, Release} & {st.step_class for st in steps}
    lookup = steps[0].kwargs
    assert lookup["download_cache"] == "/srv/dl"
    assert lookup["mirror"] == "http://127.0.0.1:1/pub/linux/kernel"
    miss = [st.step_class.__name__ for st in lookup["miss_steps"]]
    assert miss == ["Reserve", "SourceLock", "Configure", "KernelMake", "Validate",
                    "CompileCommands", "CacheStore"]  # no checkout, no git lookup
    assert all(st.step_class not in (Record, Release) for st in lookup["miss_steps"])
    assert [st.step_class for st in lookup["release_steps"]] == [Release]
    [reserve] = [st for st in lookup["miss_steps"] if st.step_class is Reserve]
    assert reserve.kwargs["cpu_cap"] == 2
    [lock] = [st for st in lookup["miss_steps"] if st.step_class is SourceLock]
    assert lock.kwargs["tree"] == Property("source_tree")  # the extracted tree


@pytest.mark.parametrize(
    "table, key, words",
    [
        ('versions = ["6.x"]', "matrix.versions[0]", "is not a kernel version spec"),
        ('versions = ["6.12", "latest"]', "matrix.versions[1]", "latest-stable"),
        ('versions = ["6.12..6.6"]', "matrix.versions[0]", "inverted kernel range"),
        ('versions = ["branch:nope/main"]', "matrix.versions[0]", "unknown repository 'nope'"),
        ('versions = ["branch:linux"]', "matrix.versions[0]", "branch:<repo>/<branch>"),
        ('versions = ["branch:linux/a..b"]', "matrix.versions[0]", "branch:<repo>/<branch>"),
        ("versions = []", "matrix.versions", "at least one"),
        ('versions = ["6.12", "6.12"]', "matrix.versions", "twice"),
        ('versions = "6.12"', "matrix.versions", "a list of strings"),
        ('profiles = ["tiny", "huge"]', "matrix.profiles[1]", "unknown profile 'huge'"),
        ("recent_days = 0", "matrix.recent_days", "from 1 to 3650"),
        ('time = "3am"', "matrix.time", '"HH:MM"'),
        ('time = "24:00"', "matrix.time", '"HH:MM"'),
        ('time = "03:60"', "matrix.time", '"HH:MM"'),
        ("time = 3", "matrix.time", "a string"),
        ('releases_url = "ftp://x/releases.json"', "matrix.releases_url", "http(s):// URL"),
        ('mirror = "cdn.kernel.org"', "matrix.mirror", "http(s):// URL"),
        ("cpu_cap = -1", "matrix.cpu_cap", "from 0 to 4096"),
        ('enabled = "yes"', "matrix.enabled", "true or false"),
        ('download_cache = ""', "matrix.download_cache", "must name a directory"),
    ],
)
def test_bad_matrix_settings_name_the_key(tmp_path: Path, table: str, key: str,
                                          words: str) -> None:
    enabled = "" if table.startswith("enabled") else "enabled = true\n"
    with pytest.raises(settings.SettingsError) as err:
        load(tmp_path, f"[matrix]\n{enabled}{table}\n")
    msg = str(err.value)
    assert f"{key} " in msg and words in msg
    assert str(tmp_path / "s.toml") in msg
    # The master configuration says the same in one line, without a traceback.
    with pytest.raises(ConfigErrors) as cfg_err:
        builders.load_settings(tmp_path / "s.toml", root=tmp_path)
    assert cfg_err.value.errors == [msg]


def test_unknown_matrix_key_is_refused_by_the_settings_loader(tmp_path: Path) -> None:
    with pytest.raises(settings.SettingsError, match="unknown key 'matrix.hour'"):
        load(tmp_path, "[matrix]\nhour = 3\n")


def test_spec_kinds() -> None:
    kinds = {t: parse_spec(t).kind for t in (
        "6.12.3", "6.15-rc3", "6.12", "6", "latest-stable", "mainline", "6.6..6.12",
        "branch:linux/sched_ext/for-next")}  # fmt: skip
    assert kinds == {
        "6.12.3": "exact", "6.15-rc3": "exact", "6.12": "prefix", "6": "prefix",
        "latest-stable": "latest-stable", "mainline": "mainline", "6.6..6.12": "range",
        "branch:linux/sched_ext/for-next": "branch",
    }
    b = parse_spec("branch:linux/sched_ext/for-next")
    assert (b.repo, b.branch) == ("linux", "sched_ext/for-next")


def test_resolution_against_releases_json() -> None:
    specs_ = [parse_spec(t) for t in
              ("6.12", "latest-stable", "mainline", "6.6..6.12", "6.1.5", "branch:linux/main")]
    resolved = resolve_versions(specs_, ROWS)
    assert [labels for _, labels in resolved] == [
        # A range ends at its end version as ktstr reads it: 6.12 is 6.12.0, so
        # 6.12.44 is outside 6.6..6.12 (`ktstr kernel build 6.6..6.12` agrees).
        ["6.12.44"], ["6.15.11"], ["6.17-rc4"], ["6.6.103"], ["6.1.5"], ["branch:linux/main"],
    ]
    assert unique_labels(resolved) == [
        "6.12.44", "6.15.11", "6.17-rc4", "6.6.103", "6.1.5", "branch:linux/main"]
    # A prefix and an exact version naming the same release are one version of the run.
    twice = resolve_versions([parse_spec("6.12"), parse_spec("6.12.44")], ROWS)
    assert unique_labels(twice) == ["6.12.44"]
    with pytest.raises(KtstrError, match="expanded to 0 stable releases"):
        resolve_versions([parse_spec("5.1..5.4")], ROWS)


def test_totals_and_summary_words() -> None:
    assert summary_text(4, 3, 0, 1) == "4 cells: 3 built, 0 cache hits, 1 failed"
    assert classify_cell(0, "cached") == "built"
    assert classify_cell(1, "store-failed") == "built"  # built, stored nowhere: WARNINGS
    assert classify_cell(0, "cache-hit") == "cache_hits"
    assert classify_cell(0, "remote-hit") == "cache_hits"  # another host's entry: not built here
    assert classify_cell(2, "failed") == "failed"
    assert classify_cell(6, "cancelled") == "failed"
    assert classify_cell(0, None) == "failed"  # succeeded without recording: not trusted


def test_cell_factory_follows_the_kernel_build_factory() -> None:
    """Every step of a push build runs for a release cell too, in the same order: the
    kernel phases (skipped on a hit) on a miss, the rest (publish, record) for every cell;
    only the git checkout and the lookups (revision, remote, tree) are the cell's own lookup
    instead (a release cell does not ask the master's remote cache)."""
    push = kernel_build_factory(repourl="/r.git", profile=Property("profile"))
    cell = kernel_build_factory(checkout=Checkout.RELEASE_TREE, profile=Property("profile"),
                                releases=ReleaseSource(download_cache="/dl"))
    [lookup], tail = cell.steps[:1], cell.steps[1:]
    assert lookup.step_class is MatrixLookup
    miss, release = lookup.kwargs["miss_steps"], lookup.kwargs["release_steps"]
    own = (RevisionLookup, RemoteLookup, KernelCheckout, CacheLookup)
    shared = [st for st in push.steps if st.step_class not in own]
    assert [st.step_class for st in miss + tail + release] == [st.step_class for st in shared]
    # Skipped on a hit in a push build = added only on a miss in a cell.
    skipped_on_hit = [st.step_class for st in shared if st.kwargs.get("doStepIf") is not_cache_hit]
    assert skipped_on_hit and set(skipped_on_hit) <= {st.step_class for st in miss}
    assert not any(st.kwargs.get("doStepIf") is not_cache_hit for st in tail)


def test_factory_parts_that_make_no_build_are_config_errors() -> None:
    with pytest.raises(ConfigErrors, match="needs the repository URL"):
        kernel_build_factory(profile="tiny")
    with pytest.raises(ConfigErrors, match="needs releases="):
        kernel_build_factory(checkout=Checkout.RELEASE_TREE, profile="tiny")
    with pytest.raises(ConfigErrors, match="not fetched with git"):
        kernel_build_factory(checkout=Checkout.RELEASE_TREE, profile="tiny", repourl="/r.git",
                             releases=ReleaseSource(download_cache="/dl"))
    with pytest.raises(ConfigErrors, match="looked up by-tree, not by-version"):
        kernel_build_factory(checkout=Checkout.TRY_TREE, lookup=Lookup.BY_VERSION,
                             profile="tiny", repourl="/r.git")
