"""BuildmasterConfig shape: workers, builders per profile, schedulers, force form, web, authz.

``buildbot checkconfig`` runs the checkout's real master.cfg (the real
kernel_build_factory) on the default settings and on a broken settings file.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from buildbot.schedulers.basic import AnyBranchScheduler
from buildbot.schedulers.forcesched import ForceScheduler, ValidationError
from buildbot.www.authz import endpointmatchers as em

import settings
from master import builders, schedulers, www
from master.changehook import BaseChangeHook
from master.frontdoor import SiteAuth
from settings.worker_specs import WorkerSpec
from tests.support.cli import run_checkconfig
from tests.support.servicekit import standin_factory


@pytest.fixture(autouse=True)
def no_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(settings.ENV_VAR, raising=False)


def specs(tmp_path: Path, s: settings.Settings) -> list[WorkerSpec]:
    return [
        WorkerSpec(
            name=f"h-llc{i}", host="h", llc_index=i, cpus=cpus, node=0,
            basedir=tmp_path / f"w{i}", password_file=s.worker_password_file(f"h-llc{i}"),
            pin_cpus=cpus, pin_note=None,
        )
        for i, cpus in enumerate([(0, 1), (2, 3)])
    ]


@pytest.fixture
def cfg(tmp_path: Path) -> tuple[settings.Settings, dict]:
    s = settings.load(settings.DEFAULT_FILE, root=tmp_path)
    settings.ensure_secret(s.worker_password_file("h-llc0"))
    return s, builders.build_config(s, factory=standin_factory, specs=specs(tmp_path, s))


def test_top_level(cfg) -> None:
    s, c = cfg
    assert c["buildbotNetUsageData"] is None
    assert c["db"] == {"db_url": s.databases.buildbot}
    assert c["protocols"] == {"pb": {"port": "tcp:9989:interface=127.0.0.1"}}
    assert c["buildbotURL"] == "http://localhost:8010/"
    assert c["change_source"] == []  # pushes arrive through the change hook
    assert [type(x).__name__ for x in c["services"]][:1] == ["RecordsService"]
    assert "ArtifactsService" in [type(x).__name__ for x in c["services"]]
    assert c["services"][0].name == "ktstr_records"
    assert len(c["configurators"]) == 1


def test_workers_are_llc_groups(cfg) -> None:
    s, c = cfg
    # Besides the LLC groups, only the nightly matrix's in-process parent worker.
    w0, w1 = [w for w in c["workers"] if w.name != "__matrix"]
    assert [w.name for w in c["workers"]] == ["h-llc0", "h-llc1", "__matrix"]
    assert [w0.name, w1.name] == ["h-llc0", "h-llc1"]
    assert w0.max_builds == w1.max_builds == 1
    # The generated password is used; a missing one becomes an unguessable one.
    assert w0.password == settings.read_secret(s.worker_password_file("h-llc0"))
    assert len(w1.password) >= 32
    props = {k: w1.properties.getProperty(k) for k in
             ("host", "llc_index", "llc_cpus", "llc_ncpus", "tree_store", "kernel_cache")}
    assert props == {"host": "h", "llc_index": 1, "llc_cpus": "2-3", "llc_ncpus": 2,
                     "tree_store": str(s.paths.tree_store),
                     "kernel_cache": str(s.paths.kernel_cache)}


def test_builder_per_profile_over_all_workers(cfg) -> None:
    s, c = cfg
    by_name = {b.name: b for b in c["builders"] if b.name.startswith("linux-")}
    assert set(by_name) == {f"linux-{p}" for p in s.profiles}
    for name, b in by_name.items():
        assert b.workernames == ["h-llc0", "h-llc1"]
        assert b.defaultProperties["profile"] == name.removeprefix("linux-")
        assert b.collapseRequests is schedulers.collapse_push_requests
    assert "push" in by_name["linux-tiny"].tags and "push" not in by_name["linux-default"].tags


def test_real_factory_is_the_default(tmp_path: Path) -> None:
    from ktstr_steps.buildsteps.factory import kernel_build_factory

    assert builders.default_factory() is kernel_build_factory


def test_push_scheduler(cfg) -> None:
    s, c = cfg
    push, force = c["schedulers"][:2]
    assert isinstance(push, AnyBranchScheduler)
    assert push.name == "push-linux"
    kw = push._config_kwargs
    assert kw["treeStableTimer"] is None  # every push builds at once
    assert kw["builderNames"] == ["linux-tiny"]
    repo = s.repos[0]

    def change(branch: str, revision: str = "a" * 40, repository: str = repo.url):
        return SimpleNamespace(branch=branch, revision=revision, repository=repository,
                               project="linux", category="push", codebase="", files=[],
                               properties={})

    f = kw["change_filter"]
    assert f.filter_change(change("feature/x"))
    assert not f.filter_change(change("feature/x", revision="0" * 40))  # deleted branch
    assert not f.filter_change(change("a;rm -rf"))  # what pre-receive refuses
    assert not f.filter_change(change("x/../y"))
    assert not f.filter_change(change("main", repository="/other.git"))


def test_branch_patterns_filter_push(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text('[[repos]]\nname = "l"\nurl = "l.git"\nhosted = true\nbranches = ["for-.*"]\n')
    s = settings.load(p, root=tmp_path)
    f = schedulers.push_filter(s.repos[0])
    ch = SimpleNamespace(branch="for-next", revision="b" * 40, repository=s.repos[0].url,
                         project="l", category=None, codebase="", files=[], properties={})
    assert f.filter_change(ch)
    ch.branch = "main"
    assert not f.filter_change(ch)


def test_force_form(cfg) -> None:
    s, c = cfg
    force = c["schedulers"][1]
    assert isinstance(force, ForceScheduler) and force.name == "force"
    kw = force._config_kwargs
    assert set(kw["builderNames"]) == {f"linux-{p}" for p in s.profiles}
    fields = {f.name: f for f in kw["properties"]}
    assert set(fields) == {"profile", "clean", "force"}
    [codebase] = kw["codebases"]
    fields.update({f.name: f for f in codebase.fields})
    assert {"branch", "revision", "repository", "project"} <= set(fields)
    assert fields["repository"].choices == [s.repos[0].url]
    assert fields["clean"].default is False and fields["force"].default is False
    profile = fields["profile"]
    assert profile.choices[0] == schedulers.BUILDER_PROFILE
    assert set(profile.choices[1:]) == set(s.profiles)

    props: dict = {}
    profile.updateFromKwargs(properties=props, kwargs={"profile": [schedulers.BUILDER_PROFILE]},
                             collector=None, master=None, changes=[])
    assert props == {}  # the builder's own profile (its default property) applies
    profile.updateFromKwargs(properties=props, kwargs={"profile": ["preempt"]},
                             collector=None, master=None, changes=[])
    assert props == {"profile": "preempt"}
    with pytest.raises(ValidationError):
        profile.updateFromKwargs(properties=props, kwargs={"profile": ["huge"]},
                                 collector=None, master=None, changes=[])
    branch = fields["branch"]
    assert branch.getFromKwargs({"branch": ["feature/x-1"]}) == "feature/x-1"
    for bad in ("a;b", "a..b", "-x", "$(id)", "foo.lock", "HEAD", "x" * 300):
        with pytest.raises(ValidationError):
            branch.getFromKwargs({"branch": [bad]})


def test_www(cfg) -> None:
    s, c = cfg
    w = c["www"]
    assert w["port"] == "tcp:8010:interface=127.0.0.1"
    assert {"waterfall_view", "console_view", "grid_view", "wsgi_dashboards", "ktstr"} <= set(
        w["plugins"])
    assert set(w["plugins"]["ktstr"]) == {"app"}  # sent to browsers: no database URL
    base = w["change_hook_dialects"]["base"]
    assert base["custom_class"] is BaseChangeHook
    assert base["repositories"] == [r.url for r in s.repos]
    assert isinstance(w["auth"], SiteAuth)
    [checker] = w["change_hook_auth"]
    assert list(checker.users) == [b"hook"] or list(checker.users) == ["hook"]


def test_authz_rules(tmp_path: Path) -> None:
    s = settings.load(settings.DEFAULT_FILE, root=tmp_path)
    authz = www.authz(s, {"admin": "pw", "dev": "pw2"})
    rules = authz.allowRules
    kinds = {type(r): r.role for r in rules}
    assert kinds[em.ForceBuildEndpointMatcher] == www.DEVELOPERS
    assert kinds[em.StopBuildEndpointMatcher] == www.DEVELOPERS
    assert kinds[em.RebuildBuildEndpointMatcher] == www.DEVELOPERS
    assert kinds[em.AnyControlEndpointMatcher] == www.ADMINS
    assert em.AnyEndpointMatcher not in kinds  # anonymous read
    roles = {}
    for m in authz.roleMatchers:
        for user in ("admin", "dev", None):
            roles.setdefault(user, set()).update(m.getRolesFromUser({"username": user}))
    assert roles == {"admin": {"admins", "developers"}, "dev": {"developers"}, None: set()}
    p = tmp_path / "s.toml"
    p.write_text("[web]\nanonymous_read = false\n")
    closed = www.authz(settings.load(p, root=tmp_path), {"admin": "pw"})
    assert any(type(r) is em.AnyEndpointMatcher for r in closed.allowRules)


def test_checkconfig_default_settings(tmp_path: Path) -> None:
    proc = run_checkconfig(settings.DEFAULT_FILE, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Config file is good!" in proc.stdout


def test_checkconfig_reports_the_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[repos]]\nname = "linux"\nurl = "x.git"\nprofiles = ["nope"]\n')
    proc = run_checkconfig(bad, tmp_path)
    assert proc.returncode == 1
    assert "repos[0].profiles names the unknown profile 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr
