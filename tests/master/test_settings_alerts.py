"""The [alerts] table: defaults, overrides over the default file, one clear line per mistake,
and what the records service applies."""

from __future__ import annotations

from pathlib import Path

import pytest

import settings as S
from master.records.compare import AlertRules
from master.records.part import alert_rules, config_part


@pytest.fixture(autouse=True)
def no_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(S.ENV_VAR, raising=False)


def load(tmp_path: Path, text: str):
    p = tmp_path / "settings.toml"
    p.write_text(text)
    return S.load(p, root=tmp_path)


def test_defaults(tmp_path: Path) -> None:
    s = S.load(S.DEFAULT_FILE, root=tmp_path)
    assert s.alerts == S.model.Alerts(new_warnings=True, bzimage_growth_pct=2.0,
                                      make_time_growth_pct=25.0)
    assert alert_rules(s) == AlertRules()


def test_override_and_zero_turns_a_rule_off(tmp_path: Path) -> None:
    s = load(tmp_path, "[alerts]\nnew_warnings = false\nbzimage_growth_pct = 0\n"
                       "make_time_growth_pct = 12.5\nmake_time_min_seconds = 5\n")
    assert alert_rules(s) == AlertRules(new_warnings=False, bzimage_growth_pct=None,
                                        make_time_growth_pct=12.5, make_time_min_seconds=5.0)
    [svc] = config_part(s).services
    assert svc.alert_rules == alert_rules(s)


@pytest.mark.parametrize("text, message", [
    ("bzimage_growth_pct = -1", "alerts.bzimage_growth_pct must be a percentage from 0"),
    ('make_time_growth_pct = "25"', "alerts.make_time_growth_pct must be a percentage"),
    ("new_warnings = 1", "alerts.new_warnings must be true or false"),
    ("make_time_min_seconds = -3", "alerts.make_time_min_seconds must be a number of seconds"),
    ("size_pct = 2", "unknown key 'alerts.size_pct'"),
])
def test_mistakes_are_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(S.SettingsError, match=message) as err:
        load(tmp_path, f"[alerts]\n{text}\n")
    assert "\n" not in str(err.value)
