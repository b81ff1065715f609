"""[try] settings: defaults, validation with the file and key named, the try builders' shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from buildbot.config.errors import ConfigErrors

import settings as settings_mod
from master import builders, tryjobs
from settings.worker_specs import WorkerSpec
from tests.support.servicekit import standin_factory


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> settings_mod.Settings:
    monkeypatch.delenv(settings_mod.ENV_VAR, raising=False)
    return settings_mod.load(settings_mod.DEFAULT_FILE, root=tmp_path)


def with_try(s: settings_mod.Settings, **table: object) -> settings_mod.Settings:
    """``s`` loaded again with these ``[try]`` keys in a settings file of its own."""
    path = try_file(s)
    path.write_text("[try]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    return settings_mod.load(path, root=s.root)


def try_file(s: settings_mod.Settings) -> Path:
    return s.root / "try-settings.toml"


def test_defaults(base: settings_mod.Settings) -> None:
    cfg = base.try_
    assert (cfg.port, cfg.bind, cfg.users) == (8031, "127.0.0.1", ("try",))
    assert cfg.users_file == base.paths.secrets / "try-users.json"
    assert cfg.repo == base.repos[0]
    assert cfg.profiles == tuple(sorted(base.profiles))
    assert cfg.strport == "tcp:8031:interface=127.0.0.1"


@pytest.mark.parametrize("table,key", [
    ({"port": 8010}, "try.port"),          # the web port
    ({"port": 9989}, "try.port"),          # the workers' PB port
    ({"port": 70000}, "try.port"),
    ({"users": ["ok", "bad name"]}, "try.users"),
    ({"users": []}, "try.users"),
    ({"repo": "nope"}, "try.repo"),
    ({"profiles": ["tiny", "huge"]}, "try.profiles"),
    ({"colour": "red"}, "try.colour"),
])
def test_bad_settings_name_the_key(base: settings_mod.Settings, table: dict, key: str) -> None:
    with pytest.raises(settings_mod.SettingsError, match=key.replace(".", r"\.")) as exc:
        with_try(base, **table)
    assert str(try_file(base)) in str(exc.value)


def test_unknown_key_in_a_settings_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text("[try]\nprot = 1234\n")
    with pytest.raises(settings_mod.SettingsError, match="try.prot"):
        settings_mod.load(p, root=tmp_path)


def test_try_builders_copy_the_push_builders(base: settings_mod.Settings, tmp_path: Path) -> None:
    s = with_try(base, profiles=["tiny"])
    specs = [WorkerSpec(name="h-llc0", host="h", llc_index=0, cpus=(0,), node=0,
                        basedir=tmp_path / "w0", password_file=s.worker_password_file("h-llc0"),
                        pin_cpus=(0,), pin_note=None)]
    c = builders.build_config(s, factory=standin_factory, specs=specs)
    by_name = {b.name: b for b in c["builders"]}
    tb, push = by_name["try-tiny"], by_name["linux-tiny"]
    assert "try-default" not in by_name
    assert tb.workernames == push.workernames
    assert tb.collapseRequests is False  # every try is its own patch
    assert tb.defaultProperties == {"profile": "tiny", "repo": "linux"}
    assert [sf.step_class for sf in tb.factory.steps] == [sf.step_class for sf in push.factory.steps]
    [sched] = [x for x in c["schedulers"] if x.name == "try"]
    assert isinstance(sched, tryjobs.TryScheduler)
    kw = sched._config_kwargs
    assert kw["builderNames"] == ["try-tiny"] and kw["repository"] == s.repos[0].url
    users = settings_mod.read_users(s.paths.secrets / "try-users.json")
    assert kw["userpass"] == sorted(users.items()) and set(users) == {"try"}
    # Loading the config again keeps the generated password.
    again = builders.build_config(s, factory=standin_factory, specs=specs)
    [sched2] = [x for x in again["schedulers"] if x.name == "try"]
    assert sched2._config_kwargs["userpass"] == kw["userpass"]


def test_real_factory_gets_the_try_checkout(base: settings_mod.Settings, tmp_path: Path) -> None:
    from ktstr_steps.buildsteps.checkout import KernelCheckout, TryCheckout

    s = with_try(base, profiles=["tiny"])
    specs = [WorkerSpec(name="h-llc0", host="h", llc_index=0, cpus=(0,), node=0,
                        basedir=tmp_path / "w0", password_file=s.worker_password_file("h-llc0"),
                        pin_cpus=(0,), pin_note=None)]
    c = builders.build_config(s, specs=specs)
    by_name = {b.name: b for b in c["builders"]}
    push_sf = by_name["linux-tiny"].factory.steps
    push = [sf.step_class for sf in push_sf]
    tried = [sf.step_class for sf in by_name["try-tiny"].factory.steps]
    from ktstr_steps.buildsteps.lookup import RevisionLookup

    assert KernelCheckout in push and TryCheckout in tried
    # A try build is its patch on top of the commit: no lookup by the commit alone
    # (neither in the cache nor in the master's remote cache).
    assert RevisionLookup in push and RevisionLookup not in tried
    by_commit = [sf for sf in push_sf if sf.step_class is RevisionLookup
                 or sf.kwargs.get("before_checkout")]
    assert len(by_commit) == 2
    assert [c for c in tried if c is not TryCheckout] == \
        [sf.step_class for sf in push_sf
         if sf.step_class is not KernelCheckout and sf not in by_commit]


def test_port_zero_means_no_try(base: settings_mod.Settings, tmp_path: Path) -> None:
    s = with_try(base, port=0)
    specs = [WorkerSpec(name="h-llc0", host="h", llc_index=0, cpus=(0,), node=0,
                        basedir=tmp_path / "w0", password_file=s.worker_password_file("h-llc0"),
                        pin_cpus=(0,), pin_note=None)]
    c = builders.build_config(s, factory=standin_factory, specs=specs)
    assert not [b for b in c["builders"] if b.name.startswith("try-")]
    assert not [x for x in c["schedulers"] if x.name == "try"]
    assert not (s.paths.secrets / "try-users.json").exists()


def test_bad_settings_are_config_errors(base: settings_mod.Settings) -> None:
    with pytest.raises(settings_mod.SettingsError):
        with_try(base, port=8010)
    with pytest.raises(ConfigErrors, match=r"try\.port"):
        builders.load_settings(try_file(base), root=base.root)
