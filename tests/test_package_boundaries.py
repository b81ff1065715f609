"""The allowed imports between packages, read from the source so they cannot rot.

Imports inside functions count too: a late import is still an edge between
the packages (and was how the pipeline used to reach master and workers).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

# package (a directory of the checkout) -> top-level modules it must never import
NEVER = {
    "settings": {"buildbot", "buildbot_worker", "twisted", "master", "workers", "launcher"},
    "workers": {"master", "launcher"},
    "master": {"launcher"},
    "ktstr_steps": {"buildbot", "twisted", "master", "workers", "launcher"},
}
# The Buildbot steps live inside the pipeline package but are not the pure pipeline.
EXEMPT = {"ktstr_steps": ("buildsteps",)}


def imported(path: Path) -> set[str]:
    """Top-level names of every absolute import in ``path``."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def sources(package: str) -> list[Path]:
    root = REPO / package
    skip = EXEMPT.get(package, ())
    return [p for p in sorted(root.rglob("*.py"))
            if p.relative_to(root).parts[0] not in skip]


@pytest.mark.parametrize("package", sorted(NEVER))
def test_package_never_imports(package: str) -> None:
    files = sources(package)
    assert files, f"no sources under {package}/"
    bad = {
        f"{path.relative_to(REPO)} imports {name}"
        for path in files
        for name in imported(path) & NEVER[package]
    }
    assert not bad, sorted(bad)


def test_the_ktstr_ci_command_is_assembled_by_the_launcher() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["ktstr-ci"] == "launcher.cli:main"
