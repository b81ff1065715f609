"""``[paths] max_trees`` / ``max_gb``: typed, defaulted, and handed to every worker."""

from __future__ import annotations

from pathlib import Path

import pytest

import settings as S
from settings.worker_specs import worker_specs


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "settings.toml"
    p.write_text(text)
    return p


def test_defaults_bound_the_store(tmp_path: Path) -> None:
    s = S.load(S.DEFAULT_FILE, root=tmp_path)
    assert s.paths.max_trees == 6 and s.paths.max_gb == 100.0


def test_values_reach_the_worker_properties(tmp_path: Path) -> None:
    s = S.load(write(tmp_path, "[paths]\nmax_trees = 3\nmax_gb = 12.5\n"), root=tmp_path)
    assert (s.paths.max_trees, s.paths.max_gb) == (3, 12.5)
    props = worker_specs(s)[0].properties(s)
    assert props["tree_max_trees"] == 3 and props["tree_max_gb"] == 12.5


def test_zero_turns_a_limit_off(tmp_path: Path) -> None:
    s = S.load(write(tmp_path, "[paths]\nmax_trees = 0\nmax_gb = 0\n"), root=tmp_path)
    assert (s.paths.max_trees, s.paths.max_gb) == (0, 0.0)


@pytest.mark.parametrize(("line", "message"), [
    ("max_trees = -1", "paths.max_trees must be an integer from 0 to 100000, not -1"),
    ("max_trees = \"5\"", "paths.max_trees must be an integer from 0 to 100000, not '5'"),
    ("max_gb = -2.0", "paths.max_gb must be a number of GiB, 0 (no limit) or more, not -2.0"),
    ("max_gb = true", "paths.max_gb must be a number of GiB (0 = no limit), not True"),
    ("max_gb = inf", "paths.max_gb must be a number of GiB, 0 (no limit) or more, not inf"),
])
def test_bad_values_say_which_key_and_what(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(S.SettingsError) as err:
        S.load(write(tmp_path, f"[paths]\n{line}\n"), root=tmp_path)
    assert message in str(err.value)
