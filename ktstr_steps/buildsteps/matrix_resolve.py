"""MatrixResolve: the first step of a matrix run, which decides the run's cells *now*.

A run's rows (the grid's left column) come from the settings' version specs:

* ``recent-branches``: every branch of a pushed repository that got a push in
  the last ``matrix.recent_days`` and would build on push, at its tip of now.
  A branch is recent when the records database has a build of it started in
  that time (pushes, forced builds, pollers and webhooks; not the matrix's own
  cells, or a branch would stay recent forever) or when Buildbot's changes
  table has a change of it dated in that time (a push whose build has not run
  yet). A change's date is its commit's date, so an old commit pushed today
  counts through its build;
* ``branch:<repo>/<branch>``: that branch's tip of now;
* kernel.org versions (``latest-stable``, ``mainline``, prefixes, ranges) from
  releases.json, fetched over treq so the reactor keeps serving; exact versions
  need nothing.

A spec that cannot be resolved (kernel.org or its mirror unreachable, a
deleted branch, an unknown prefix) does not stop the run: its cells are
listed with ``kind="unresolved"`` and the error line, and the fan-out records
them as failed while every other cell builds. Tips come from one ``git
ls-remote --heads`` per repository.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from buildbot.data import resultspec
from buildbot.process.results import FAILURE, SUCCESS, WARNINGS
from twisted.internet import threads
from twisted.internet.utils import getProcessOutputAndValue

from ktstr_steps.buildsteps.base import one_line
from ktstr_steps.buildsteps.matrix_base import CELLS_PROP, RUN_ID_PROP, MasterStep
from ktstr_steps.errors import KtstrError
from ktstr_steps.kernelorg import http as kernelorg_http
from ktstr_steps.kernelorg import releases, urls
from ktstr_steps.matrixspec import (
    RECENT,
    Spec,
    branch_label,
    parse_spec,
    recent_branches,
    resolve_versions,
)

RELEASES_TIMEOUT = 30.0
# What the user changes to fetch releases.json from elsewhere.
RELEASES_SETTING = "matrix.releases_url"
LS_REMOTE_TIMEOUT = 60.0
DAY = 86400


async def _fetch_releases(url: str) -> list[releases.Release]:
    """releases.json over treq: the reactor keeps serving while kernel.org answers.

    Only the transport is here; the answer is checked and parsed by the kernel.org
    package, like the worker command's own fetch.
    """
    import treq

    try:
        resp = await treq.get(url, timeout=RELEASES_TIMEOUT,
                              headers={"User-Agent": [kernelorg_http.USER_AGENT]})
        body = await treq.content(resp)
    except Exception as exc:  # DNS, refused, timeout: one message for all of them
        raise releases.unreachable(url, exc, setting=RELEASES_SETTING) from None
    ctype = b",".join(resp.headers.getRawHeaders(b"content-type", [])).decode(errors="replace")
    return releases.releases_from_answer(url, resp.code, ctype, body, setting=RELEASES_SETTING)


async def _branch_heads(url: str) -> dict[str, str]:
    """Every branch of ``url`` and the commit it points at now (git ls-remote, no blocking)."""
    out, err, code = await getProcessOutputAndValue(
        "timeout", [str(int(LS_REMOTE_TIMEOUT)), "git", "ls-remote", "--heads", "--", url],
        env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C"},
    )  # fmt: skip
    if code != 0:
        why = err.decode(errors="replace").strip().splitlines()
        if code == 124:
            why = [f"no answer in {LS_REMOTE_TIMEOUT:.0f}s"]
        raise KtstrError(f"git ls-remote {url}: {why[-1] if why else code}", kind="git-failed")
    heads = {}
    for line in out.decode(errors="replace").splitlines():
        sha, _, ref = line.partition("\t")
        if ref.startswith("refs/heads/"):
            heads[ref[len("refs/heads/"):]] = sha
    return heads


async def _recent_pushes(master: Any, since: float) -> list[tuple[str | None, str | None]]:
    """(repository, branch) of every change Buildbot stored since ``since`` (epoch seconds).

    Through the Data API, which turns the filter into the SQL query's WHERE:
    only the recent changes are read.
    """
    changes = await master.data.get(
        ("changes",), filters=[resultspec.Filter("when_timestamp", "ge", [int(since)])])
    return sorted({(c["repository"], c["branch"]) for c in changes}, key=str)


class MatrixResolve(MasterStep):
    """Resolve the specs now, list the cells (unresolvable ones as failed), open the run row."""

    name = "resolve"
    description = ["resolving versions"]
    haltOnFailure = True

    def __init__(
        self,
        *,
        specs: list[str],
        profiles: list[str],
        repos: dict[str, str],
        branch_patterns: dict[str, Sequence[str]] | None = None,
        recent_days: int = 14,
        releases_url: str | None = None,
        mirror: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.specs = list(specs)
        self.profiles = list(profiles)
        self.repos = dict(repos)
        self.branch_patterns = {k: list(v) for k, v in (branch_patterns or {}).items()}
        self.recent_days = recent_days
        self.releases_url = releases_url
        self.mirror = mirror
        super().__init__(**kwargs)
        self._heads: dict[str, dict[str, str] | KtstrError] = {}

    async def heads(self, repo: str) -> dict[str, str]:
        """The branches of ``repo`` (one ls-remote per repository and run)."""
        if repo not in self._heads:
            url = self.repos.get(repo)
            try:
                if url is None:
                    raise KtstrError(f"no repository {repo!r} in [[repos]]", kind="usage")
                self._heads[repo] = await _branch_heads(url)
            except KtstrError as exc:
                self._heads[repo] = exc
        got = self._heads[repo]
        if isinstance(got, KtstrError):
            raise got
        return got

    async def branch_cells(self, spec: Spec, lines: list[str]) -> list[dict[str, Any]]:
        """The branch rows of ``spec`` with their tips; a failure is the spec's error."""
        if spec.kind == RECENT:
            since = self.master.reactor.seconds() - self.recent_days * DAY
            pushes = await _recent_pushes(self.master, since)
            svc, _ = self.records()
            built = getattr(svc, "recent_branches", None)
            if built is not None:
                try:
                    pushes += await built(since)
                except Exception as exc:  # the changes alone still name the pushed branches
                    lines.append(f"recent-branches: records not read: {one_line(str(exc))}")
            pairs = recent_branches(pushes, self.repos, self.branch_patterns)
            lines.append(f"recent-branches: {len(pairs)} branch(es) pushed in the last "
                         f"{self.recent_days} days")
        else:
            pairs = [(spec.repo or "", spec.branch or "")]
        rows = []
        for repo, branch in pairs:
            try:
                sha = (await self.heads(repo)).get(branch)
            except KtstrError as exc:
                if spec.kind != RECENT:
                    raise
                rows.append({"label": branch_label(repo, branch), "why": str(exc)})
                continue
            if sha is None:
                if spec.kind == RECENT:
                    lines.append(f"  {branch_label(repo, branch)}: deleted since, not built")
                    continue
                raise KtstrError(f"branch {branch!r} does not exist in {self.repos[repo]}",
                                 kind="git-ref-not-found")
            rows.append({"label": branch_label(repo, branch), "repo": repo,
                         "repository": self.repos[repo], "branch": branch, "revision": sha})
        return rows

    async def resolve(self, lines: list[str]) -> list[dict[str, Any]]:
        """Every row of the run: versions, branch tips and unresolved specs (with ``error``)."""
        parsed = [parse_spec(s) for s in self.specs]
        rows_error: str | None = None
        table = None
        if any(p.needs_releases for p in parsed):
            url = urls.releases_url(self.releases_url)
            lines.append(f"releases.json: {url}")
            try:
                table = await _fetch_releases(url)
            except KtstrError as exc:
                rows_error = one_line(str(exc))
        out: list[dict[str, Any]] = []
        for spec in parsed:
            try:
                if spec.needs_releases and table is None:
                    raise KtstrError(rows_error or "releases.json is needed", kind="releases-fetch")
                if spec.kind in ("branch", RECENT):
                    found = await self.branch_cells(spec, lines)
                    for row in found:
                        tip = f" @ {row['revision'][:12]}" if "revision" in row else ""
                        why = f": {row['why']}" if "why" in row else ""
                        lines.append(f"{spec.text} -> {row['label']}{tip}{why}")
                    out += [{**row, "kind": "branch" if "revision" in row else "unresolved"}
                            for row in found]
                    continue
                # A prefix of an EOL series probes the mirror with blocking HEADs.
                [(_, labels)] = await threads.deferToThread(
                    resolve_versions, [spec], table, mirror=self.mirror)
            except KtstrError as exc:
                message = one_line(str(exc))
                lines.append(f"{spec.text} -> error: {message}")
                out.append({"label": spec.text, "kind": "unresolved", "why": message})
                continue
            lines.append(f"{spec.text} -> {', '.join(labels)}")
            out += [{"label": v, "kind": spec.kind, "version": v} for v in labels]
        return out

    async def run(self) -> int:
        lines: list[str] = []
        try:
            rows = await self.resolve(lines)
        except ValueError as exc:  # a spec the settings should have refused
            await self.addCompleteLog("resolve", "\n".join([*lines, f"error: {exc}"]) + "\n")
            self.descriptionDone = f"matrix.versions: {one_line(str(exc))}"
            return FAILURE
        labels = list(dict.fromkeys(r["label"] for r in rows))
        first = {}
        for row in rows:
            first.setdefault(row["label"], row)
        cells = [{**first[label], "profile": p} for label in labels for p in self.profiles]
        unresolved = [label for label in labels if first[label]["kind"] == "unresolved"]
        lines.append(f"{len(labels)} version(s) x {len(self.profiles)} profile(s) = "
                     f"{len(cells)} cells")
        await self.addCompleteLog("resolve", "\n".join(lines) + "\n")
        self.setProperty(CELLS_PROP, cells, "MatrixResolve")
        self.setProperty("matrix_versions", labels, "MatrixResolve")
        result = SUCCESS
        svc, why = self.records()
        run_id = None
        why_text = ""
        if svc is None:
            why_text = why or "no records service"
            result = WARNINGS
        else:
            try:
                run_id = await svc.start_matrix_run(
                    versions=labels, profiles=self.profiles, spec=" ".join(self.specs),
                    buildid=self.build.buildid,
                )
            except Exception as exc:  # the cells still build; only the run row is missing
                why_text = one_line(str(exc)) or type(exc).__name__
                result = WARNINGS
        if run_id is not None:
            self.setProperty(RUN_ID_PROP, run_id, "MatrixResolve")
        if not labels:
            self.descriptionDone = "no cells: nothing to build"
            if any(parse_spec(s).kind == RECENT for s in self.specs):
                self.descriptionDone += f" (no branch pushed in the last {self.recent_days} days)"
        else:
            shown = ", ".join(labels) if len(labels) <= 6 else f"{', '.join(labels[:6])}, ..."
            self.descriptionDone = f"{len(cells)} cells: {shown} x {', '.join(self.profiles)}"
        if unresolved:
            # The cells of these fail; the run goes on with the others.
            self.descriptionDone += f" ({len(unresolved)} unresolved)"
        if result == WARNINGS:
            self.descriptionDone += f" (no run row: {why_text})"
        return result


__all__ = ["RELEASES_SETTING", "MatrixResolve"]
