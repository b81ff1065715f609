"""The merge of the features' config parts: order kept, one name claimed once, clashes named."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from buildbot.config.errors import ConfigErrors

from master.parts import ConfigPart, merge


def named(name: str) -> Any:
    return SimpleNamespace(name=name)


def test_an_empty_merge_is_a_config_with_empty_lists() -> None:
    c = merge([])
    assert c == {"workers": [], "builders": [], "schedulers": [], "change_source": [],
                 "services": [], "configurators": [],
                 "www": {"plugins": {}, "change_hook_dialects": {}}}


def test_parts_are_merged_in_their_order() -> None:
    core = ConfigPart(feature="core", top={"title": "ci"}, workers=[named("w0")],
                      builders=[named("linux-tiny")], schedulers=[named("push-linux")],
                      configurators=["janitor"], www={"port": "tcp:8010"},
                      www_plugins={"grid_view": {}}, dialects={"base": {"x": 1}})
    records = ConfigPart(feature="records", services=[named("ktstr_records")],
                         dashboards=[{"name": "ktstr"}])
    polled = ConfigPart(feature="pollers", builders=[named("up-tiny")],
                        schedulers=[named("push-up")], change_sources=[named("up")],
                        dashboards=[{"name": "artifacts"}], dialects={"github": {"y": 2}})
    c = merge([core, records, polled])
    assert c["title"] == "ci"
    assert [b.name for b in c["builders"]] == ["linux-tiny", "up-tiny"]
    assert [s.name for s in c["schedulers"]] == ["push-linux", "push-up"]
    assert [s.name for s in c["change_source"]] == ["up"]
    assert [s.name for s in c["services"]] == ["ktstr_records"]
    assert c["configurators"] == ["janitor"]
    assert c["www"] == {
        "port": "tcp:8010",
        "plugins": {"grid_view": {}, "wsgi_dashboards": [{"name": "ktstr"}, {"name": "artifacts"}]},
        "change_hook_dialects": {"base": {"x": 1}, "github": {"y": 2}},
    }


@pytest.mark.parametrize("kind, first, second", [
    ("builder", {"builders": [named("linux-tiny")]}, {"builders": [named("linux-tiny")]}),
    ("scheduler", {"schedulers": [named("force")]}, {"schedulers": [named("force")]}),
    ("worker", {"workers": [named("w0")]}, {"workers": [named("w0")]}),
    ("service", {"services": [named("s")]}, {"services": [named("s")]}),
    ("change source", {"change_sources": [named("up")]}, {"change_sources": [named("up")]}),
    ("change hook dialect", {"dialects": {"github": {}}}, {"dialects": {"github": {}}}),
    ("dashboard", {"dashboards": [{"name": "ktstr"}]}, {"dashboards": [{"name": "ktstr"}]}),
    ("www plugin", {"www_plugins": {"grid_view": {}}}, {"www_plugins": {"grid_view": {}}}),
    ("www setting", {"www": {"port": 1}}, {"www": {"port": 2}}),
    ("setting", {"top": {"title": "a"}}, {"top": {"title": "b"}}),
])
def test_two_parts_claiming_one_name_is_a_config_error(kind: str, first: dict,
                                                       second: dict) -> None:
    with pytest.raises(ConfigErrors) as exc:
        merge([ConfigPart(feature="core", **first), ConfigPart(feature="matrix", **second)])
    [error] = exc.value.errors
    assert error.startswith(f"matrix: {kind} ")
    assert "already exists; rename one of them (defined by both core and matrix)" in error


def test_one_part_claiming_a_name_twice_is_a_config_error() -> None:
    with pytest.raises(ConfigErrors, match="builder b already exists"):
        merge([ConfigPart(feature="core", builders=[named("b"), named("b")])])


def test_the_clash_names_the_settings_to_change() -> None:
    polled = ConfigPart(feature="pollers", where="settings file s.toml: external.pollers",
                        fix="rename the poller", builders=[named("gh-tiny")])
    with pytest.raises(ConfigErrors) as exc:
        merge([ConfigPart(feature="core", builders=[named("gh-tiny")]), polled])
    assert exc.value.errors == [
        "settings file s.toml: external.pollers: builder gh-tiny already exists; rename the "
        "poller (defined by both core and pollers)"]


def test_every_clash_is_reported_at_once() -> None:
    a = ConfigPart(feature="a", builders=[named("x")], schedulers=[named("y")])
    b = ConfigPart(feature="b", builders=[named("x")], schedulers=[named("y")])
    with pytest.raises(ConfigErrors) as exc:
        merge([a, b])
    assert len(exc.value.errors) == 2


def test_www_plugins_and_dialects_come_only_from_their_fields() -> None:
    with pytest.raises(ConfigErrors, match="www setting plugins is made by the merge"):
        merge([ConfigPart(feature="web", www={"plugins": {}})])
    with pytest.raises(ConfigErrors, match="wsgi_dashboards is given as a plugin and as"):
        merge([ConfigPart(feature="web", www_plugins={"wsgi_dashboards": []},
                          dashboards=[{"name": "d"}])])
