"""The package boundaries, read from the code itself so they cannot rot.

Every ``import`` and ``from … import`` in the project's packages (function
bodies included) is parsed with :mod:`ast` and mapped to the package it
reaches. The allowed edges:

| package                      | may import                                  |
|------------------------------|---------------------------------------------|
| pipeline (ktstr_steps/)      | stdlib, psutil, kconfiglib                  |
| steps (ktstr_steps/buildsteps)| pipeline, Buildbot, Twisted                 |
| settings                     | pipeline                                    |
| workers                      | pipeline, settings                          |
| master                       | steps, pipeline, settings, Buildbot, Twisted,|
|                              | Flask, SQLAlchemy (and alembic)             |
| launcher                     | everything                                  |

and no cycle between packages. Steps find the master's services by name at
run time instead of importing it; the worker specs (configuration derived
from the settings and the host's topology) live in the settings package, so
master, workers and launcher share them without importing each other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ktstr_steps", "settings", "workers", "master", "launcher")
THIRD_PARTY_WATCHED = {"buildbot": "buildbot", "buildbot_worker": "buildbot",
                       "twisted": "twisted", "treq": "twisted", "flask": "flask",
                       "sqlalchemy": "sqlalchemy", "alembic": "sqlalchemy"}

# package -> the packages (ours and watched third-party ones) it may import
ALLOWED: dict[str, set[str]] = {
    "pipeline": set(),
    "steps": {"pipeline", "buildbot", "twisted"},
    "settings": {"pipeline"},
    "workers": {"pipeline", "settings"},
    "master": {"steps", "pipeline", "settings", "buildbot", "twisted", "flask", "sqlalchemy"},
    "launcher": {"pipeline", "steps", "settings", "workers", "master", "buildbot", "twisted",
                 "flask", "sqlalchemy"},
}


def package_of_module(name: str) -> str | None:
    """Our package (or a watched third-party one) that module ``name`` belongs to."""
    top, _, rest = name.partition(".")
    if top == "ktstr_steps":
        return "steps" if rest == "buildsteps" or rest.startswith("buildsteps.") else "pipeline"
    if top in ("settings", "workers", "master", "launcher"):
        return top
    return THIRD_PARTY_WATCHED.get(top)


def package_of_file(path: Path) -> str:
    module, _ = module_of_path(str(path.relative_to(REPO)))
    return package_of_module(module) or "?"


def module_of_path(path: str) -> tuple[str, str]:
    """``(module, the package its relative imports start from)`` of a file path.

    A package's ``__init__.py`` is the package itself: its ``from . import x``
    imports from that package, not from the one above.
    """
    parts = path.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        module = ".".join(parts[:-1])
        return module, module
    return ".".join(parts), ".".join(parts[:-1])


def imported(tree: ast.AST, package: str) -> Iterator[tuple[int, str]]:
    """``(line, imported module)`` for every import in ``tree`` (relative ones resolved
    against ``package``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target


def violations(source: str, path: str) -> list[str]:
    """Edges of one file that the table forbids, as ``path:line: a -> b (module)``."""
    module, package = module_of_path(path)
    src = package_of_module(module)
    if src is None:
        return []
    out = []
    for line, target in imported(ast.parse(source), package):
        dst = package_of_module(target)
        if dst is None or dst == src:
            continue
        if dst not in ALLOWED[src]:
            out.append(f"{path}:{line}: {src} -> {dst} ({target})")
    return out


def project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def test_every_import_follows_the_table() -> None:
    found = []
    for path in project_files():
        rel = str(path.relative_to(REPO))
        found += violations(path.read_text(), rel)
    assert found == [], "imports across the package boundaries:\n" + "\n".join(found)


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for path in project_files():
        src = package_of_file(path)
        _, package = module_of_path(str(path.relative_to(REPO)))
        for _, target in imported(ast.parse(path.read_text()), package):
            dst = package_of_module(target)
            if dst and dst != src and dst in ALLOWED:
                graph.setdefault(src, set()).add(dst)

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n}))
                   for n in graph.get(a, ()))

    cycles = [p for p in graph if reaches(p, p, {p})]
    assert cycles == [], f"packages in an import cycle: {cycles} (graph {graph})"


# The cross-package edges the project had before the boundaries were restored:
# the checker must refuse each of them.
OLD_EDGES = [
    ("ktstr_steps/cli.py", "from master import cli_records\n"),
    ("ktstr_steps/cli.py", "from workers import cli_workers\n"),
    ("ktstr_steps/buildsteps/record.py",
     "def f():\n    from master.records.service import get_records_service\n"),
    ("ktstr_steps/buildsteps/matrix.py",
     "def records(self):\n    from ktstr_steps.buildsteps.record import find_records_service\n"
     "    from master.records.service import get_records_service\n"),
    ("master/builders.py", "from workers.spec import WorkerSpec, worker_specs\n"),
    ("master/www.py", "from launcher import service\n"),
    ("workers/spec.py", "from master.settings import Settings\n"),
    ("workers/cli_workers.py", "from master import settings\n"),
    ("workers/service.py", "from master import hooks\n"),
    ("master/builders.py", "from launcher.service import Service\n"),
    ("ktstr_steps/pipeline.py", "import buildbot.process.results\n"),
    ("settings/load.py", "from twisted.internet import defer\n"),
]


@pytest.mark.parametrize(("path", "source"), OLD_EDGES)
def test_the_checker_refuses_each_old_edge(path: str, source: str) -> None:
    assert violations(source, path), f"{path}: {source!r} was not flagged"


def test_relative_imports_are_resolved() -> None:
    assert violations("from ...master import x\n", "ktstr_steps/buildsteps/record.py")
    assert not violations("from . import base\n", "ktstr_steps/buildsteps/record.py")
    # In a package's __init__.py, "." is that package.
    assert violations("from .buildsteps import factory\n", "ktstr_steps/__init__.py")
    assert not violations("from . import base\n", "ktstr_steps/buildsteps/__init__.py")
    assert violations("from ..buildsteps import x\n", "ktstr_steps/cache/__init__.py")


def test_the_ktstr_ci_command_is_assembled_by_the_launcher() -> None:
    """The one entry point that imports every area's subcommands is not in the pipeline."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["ktstr-ci"] == "launcher.cli:main"


# ---------------------------------------------------------------- tests and bench


def imports_under_tests(source: str) -> list[str]:
    """Every module a source imports under ``tests`` (absolute imports only)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [n for n in names if n == "tests" or n.startswith("tests.")]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("tests.")]
    return found


def support_problems(source: str, label: str, *, may_import_tests: bool) -> list[str]:
    """Imports of ``source`` that reach a test module (or, for bench/, anything but support)."""
    problems = []
    for name in imports_under_tests(source):
        parts = name.split(".")
        if parts[:2] == ["tests", "support"] or name == "tests":
            continue
        if may_import_tests and not any(p.startswith("test_") or p == "conftest" for p in parts):
            continue
        problems.append(f"{label}: imports {name}")
    return problems


def test_no_test_module_imports_another_test_module() -> None:
    problems = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        problems += support_problems(path.read_text(), str(path.relative_to(REPO)),
                                     may_import_tests=True)
    assert problems == []


def test_bench_imports_only_test_support() -> None:
    problems = []
    for path in sorted((REPO / "bench").rglob("*.py")):
        problems += support_problems(path.read_text(), str(path.relative_to(REPO)),
                                     may_import_tests=False)
    assert problems == []


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("tests/steps/test_x.py", "from tests.steps.test_steps_base import ktstr\n"),
        ("tests/master/test_x.py", "import tests.master.test_records as base\n"),
        ("tests/pipeline/test_x.py", "from tests.conftest import REPO\n"),
        ("bench/x.py", "from tests.pipeline import test_cache\n"),
    ],
)
def test_the_test_import_checker_refuses(path: str, source: str) -> None:
    assert support_problems(source, path, may_import_tests=not path.startswith("bench/"))
    assert not support_problems("from tests.support.cli import ktstr\n", path,
                                may_import_tests=not path.startswith("bench/"))


def test_support_fixtures_are_registered_not_imported() -> None:
    conftest = (REPO / "tests" / "conftest.py").read_text()
    for mod in ("kernelorg", "pg", "netns", "servicekit"):
        assert f'"tests.support.{mod}"' in conftest
