"""The result contract (ktstr_steps/results.py): outcomes, the error-kind registry, the result object."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from ktstr_steps import results
from ktstr_steps.buildstate import BuildState
from ktstr_steps.results import BuildResult, Outcome

REPO = Path(__file__).resolve().parents[2]


def _packages() -> list[Path]:
    """Every Python package of the repository (tests aside): where kinds are written."""
    return sorted(p.parent for p in REPO.glob("*/__init__.py") if p.parent.name != "tests")


def _callee(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


def used_kinds() -> dict[str, list[str]]:
    """``kind -> [file:line]`` of every error kind written as a literal in the code.

    An error kind is the ``kind=`` of an error's constructor (``...Error(...)``,
    ``ResourceContention``, an error class's ``super().__init__``) or the
    ``"kind"`` of a dict that also says ``"message"`` or ``"error"`` (``errors[]``
    entries and the holder's answers). Other ``kind=`` arguments (a source's
    kind, psutil's connection kind) are not error kinds.
    """
    found: dict[str, list[str]] = {}
    for pkg in _packages():
        for path in sorted(pkg.rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            where = f"{path.relative_to(REPO)}"
            for node in ast.walk(tree):
                values: list[ast.expr] = []
                if isinstance(node, ast.Call):
                    name = _callee(node.func)
                    if name.endswith(("Error", "Contention")) or name == "__init__":
                        values = [kw.value for kw in node.keywords if kw.arg == "kind"]
                elif isinstance(node, ast.Dict):
                    keys = [k.value if isinstance(k, ast.Constant) else None for k in node.keys]
                    if "kind" in keys and ("message" in keys or "error" in keys):
                        values = [node.values[keys.index("kind")]]
                for value in values:
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        found.setdefault(value.value, []).append(f"{where}:{node.lineno}")
    return found


def test_every_error_kind_in_the_code_is_registered() -> None:
    used = used_kinds()
    # The scan sees the code it is meant to see (an empty scan would pass anything).
    assert {"usage", "make-failed", "cache-store-failed", "holder-error", "schema_drift",
            "reservation-lost", "records"} <= set(used)
    unregistered = {k: v for k, v in used.items() if k not in results.ERROR_KINDS}
    assert not unregistered, (
        "error kinds used but not registered in ktstr_steps/results.py ERROR_KINDS: "
        + "; ".join(f"{k!r} at {', '.join(v)}" for k, v in sorted(unregistered.items()))
    )


def test_registry_entries_say_what_they_mean() -> None:
    for kind, meaning in results.ERROR_KINDS.items():
        assert kind and kind == kind.strip() and " " not in kind, kind
        assert meaning.strip(), kind


def test_corrupt_entry_kinds_are_registered() -> None:
    from ktstr_steps.cache.metadata import CORRUPT_KINDS

    assert set(CORRUPT_KINDS) <= set(results.ERROR_KINDS)


def test_outcome_sets() -> None:
    assert [o.value for o in results.PIPELINE_OUTCOMES] == [
        "cached", "cache-hit", "remote-hit", "dirty-not-cached", "non-git-not-cached",
        "changed-during-build", "store-failed", "failed"]  # fmt: skip
    assert results.RECORDED_OUTCOMES == (*results.PIPELINE_OUTCOMES, "cancelled", "interrupted")
    assert results.BUILT_OUTCOMES == {"cached", "dirty-not-cached", "non-git-not-cached",
                                      "changed-during-build", "store-failed"}
    assert results.CACHED_OUTCOMES == {"cached", "cache-hit", "remote-hit"}
    assert results.HIT_OUTCOMES == {"cache-hit", "remote-hit"}
    assert not results.CACHED_OUTCOMES & results.NOT_CACHED_OUTCOMES
    # The values are the strings the records database and the REST properties keep.
    assert json.dumps([Outcome.CACHE_HIT]) == '["cache-hit"]' and f"{Outcome.FAILED}" == "failed"


def test_every_outcome_has_a_dashboard_colour() -> None:
    from master.dashboard import OUTCOME_COLOURS

    assert set(OUTCOME_COLOURS) == {*results.RECORDED_OUTCOMES, "none"}


def test_result_object_round_trip() -> None:
    state = BuildState(outcome=Outcome.CACHED, cache_key="k", llcs=[0], llc_cpus=[0, 1],
                       phases={"make": 1.5}, source_meta={"type": "tarball"})
    obj = state.result().to_json()
    assert list(obj)[:3] == ["ok", "outcome", "cache_key"] and obj["ok"] is True
    text = json.dumps(obj)
    again = BuildResult.from_json(json.loads(text))
    assert again == BuildResult.from_json(obj) and again.to_json() == json.loads(text)
    assert again.outcome == "cached" and again.llc_cpus == [0, 1]


def test_result_object_from_a_failed_command() -> None:
    got = BuildResult.from_json({"ok": False, "errors": [{"kind": "no-state", "message": "m"}],
                                 "from_a_newer_worker": 1})
    assert got.outcome is None and got.overrides is None and got.first_error() == "m"


@pytest.mark.parametrize("bad", [{"llcs": "0"}, {"ok": "yes"}, {"make_jobs": True},
                                 {"errors": None}, {"phases": {"make": "slow"}}])
def test_result_object_rejects_wrong_types(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        BuildResult.from_json(bad)
