"""The matrix's version specs: what an entry of ``matrix.versions`` may say, and what it means.

Pure (no I/O but the mirror probe of an end-of-life prefix, no Buildbot): the
settings validate ``matrix.versions`` with :func:`parse_spec`, and a matrix
run resolves the specs to cell labels with :func:`resolve_versions` when it
starts, from releases.json.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ktstr_steps.errors import KtstrError
from ktstr_steps.kernelorg import releases
from ktstr_steps.kernelorg.versions import is_prefix, is_range, parse_range, version_tuple
from ktstr_steps.refnames import RULE, branch_problem

BRANCH_PREFIX = "branch:"
# Every branch of every pushed repository that got a push in the last matrix.recent_days.
RECENT = "recent-branches"
_REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Spec:
    """One entry of ``matrix.versions``."""

    text: str
    kind: str  # exact | prefix | latest-stable | mainline | range | branch | recent-branches
    repo: str | None = None
    branch: str | None = None

    @property
    def needs_releases(self) -> bool:
        return self.kind in ("prefix", "latest-stable", "mainline", "range")


SPEC_FORMS = (
    "recent-branches, an exact version (6.12.3, 6.15-rc3), a prefix (6.12), latest-stable, "
    "mainline, a range (6.6..6.12) or branch:<repo>/<branch>"
)


def parse_spec(text: str) -> Spec:
    """Classify a version spec without any I/O; ValueError says what is accepted."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"must be {SPEC_FORMS}, not {text!r}")
    if text in ("latest-stable", "mainline", RECENT):
        return Spec(text, text)
    if text.startswith(BRANCH_PREFIX):
        repo, sep, branch = text[len(BRANCH_PREFIX):].partition("/")
        if not sep or not _REPO_NAME.match(repo):
            raise ValueError(
                f"{text!r} is not branch:<repo>/<branch> with a repository name from [[repos]]"
            )
        problem = branch_problem(branch)
        if problem is not None:
            raise ValueError(
                f"{text!r}: the branch of branch:<repo>/<branch> cannot be built: {problem}; {RULE}"
            )
        return Spec(text, "branch", repo=repo, branch=branch)
    if is_range(text):
        try:
            parse_range(text)
        except KtstrError as exc:
            raise ValueError(str(exc)) from None
        return Spec(text, "range")
    if is_prefix(text):
        return Spec(text, "prefix")
    try:
        version_tuple(text)
    except KtstrError:
        raise ValueError(f"{text!r} is not a kernel version spec; use {SPEC_FORMS}") from None
    return Spec(text, "exact")


def resolve_versions(
    specs: list[Spec], rows: list[releases.Release] | None, *, mirror: str | None = None
) -> list[tuple[Spec, list[str]]]:
    """Each spec with the cell labels it resolves to (versions, or ``branch:repo/branch``).

    Blocking for a prefix of an EOL series (ktstr probes the mirror): run it in a thread.
    """
    out: list[tuple[Spec, list[str]]] = []
    for spec in specs:
        if spec.needs_releases and rows is None:
            raise KtstrError(f"{spec.text}: releases.json is needed", kind="releases-fetch")
        try:
            if spec.kind == RECENT:
                labels = []  # known only to the run: see recent_branches
            elif spec.kind in ("exact", "branch"):
                labels = [spec.text]
            elif spec.kind == "latest-stable":
                labels = [releases.latest_stable(rows or [])]
            elif spec.kind == "mainline":
                labels = [releases.mainline(rows or [])]
            elif spec.kind == "range":
                labels = releases.expand_range(spec.text, rows or [])
            else:
                labels = [releases.resolve_prefix(spec.text, rows or [], mirror=mirror)]
        except KtstrError as exc:
            # Say which entry of matrix.versions could not be resolved.
            raise KtstrError(f"{spec.text!r}: {exc}", kind=exc.kind) from None
        out.append((spec, labels))
    return out


def unique_labels(resolved: list[tuple[Spec, list[str]]]) -> list[str]:
    """The run's versions in settings order, each once (6.12 and 6.12.44 may be one)."""
    seen: dict[str, None] = {}
    for _, labels in resolved:
        for label in labels:
            seen.setdefault(label, None)
    return list(seen)


def branch_label(repo: str, branch: str) -> str:
    """A branch cell's label (the grid's row), the same text as a ``branch:`` entry."""
    return f"{BRANCH_PREFIX}{repo}/{branch}"


def recent_branches(
    pushes: Iterable[tuple[str | None, str | None]],
    repos: Mapping[str, str],
    patterns: Mapping[str, Sequence[str]],
) -> list[tuple[str, str]]:
    """The (repo, branch) pairs a ``recent-branches`` run builds, from recent pushes.

    ``pushes`` are (repository URL, branch) of the changes of the last
    ``recent_days``; ``repos`` maps a repository name to its URL (settings
    order), ``patterns`` a name to its push branch patterns. A branch counts
    when its repository is one of ``repos`` and a push to it would build
    (a buildable name matching a pattern), so the night builds what the day
    built, not branches nobody asked to build. Sorted by repository (settings
    order), then branch name, each once.
    """
    by_url = {url: name for name, url in repos.items()}
    order = {name: i for i, name in enumerate(repos)}
    found: set[tuple[str, str]] = set()
    for url, branch in pushes:
        name = by_url.get(url or "")
        if name is None or not branch or branch_problem(branch) is not None:
            continue
        if any(re.fullmatch(p, branch) for p in patterns.get(name, (".*",))):
            found.add((name, branch))
    return sorted(found, key=lambda rb: (order[rb[0]], rb[1]))
