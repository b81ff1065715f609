"""Drain the push spool: pushes the hook could not deliver are added when the master is back.

The post-receive hook spools a change it could not deliver (master down,
timed out, an HTTP 5xx answer) in ``<bare repo>/ktstr-ci-spool/`` (see
:mod:`master.hooks.spool` for why a spool and not a poller). This service
drains the spool of every hosted repository at start and then every
``interval`` seconds:

* it waits until the push scheduler takes changes (the master is fully up),
  since a change added before the scheduler consumes them would never build;
* per branch only the newest spooled tip is added (older ones are
  superseded; a spooled deletion drops them all), through
  ``master.data.updates.addChange`` with the fields the hook would have
  posted, after the same checks as a posted change (:func:`check_change`);
  ``repository`` and ``project`` come from the settings of the repository
  whose spool it is;
* a spooled file is deleted only after its change was added, so a master
  killed mid-drain adds it on its next start (at worst once more; the push
  scheduler supersedes a queued duplicate);
* a change whose POST may have reached the master (``delivery: unknown``) is
  skipped when the branch's newest change already has that revision;
* a file that cannot be used goes to ``rejected/`` with the reason, logged;
* one drainer at a time per spool (a flock), should two masters share the
  host of a bare repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from buildbot.data import resultspec
from buildbot.util import service
from twisted.internet import defer, task
from twisted.python import log

from ktstr_steps.refnames import RULE, branch_problem, revision_problem, shown
from master.hooks import spool
from master.parts import ConfigPart
from master.schedulers import push_scheduler_name
from settings import Settings

DRAIN_INTERVAL_S = 2.0
# How soon to look again while the master is still starting.
READY_RECHECK_S = 0.2


def check_change(change: dict[str, Any]) -> str | None:
    """None when a change may be stored, else why not: the rules of ``/change_hook/base``."""
    branch, revision = change.get("branch"), change.get("revision")
    problem = branch_problem(branch)
    if problem is not None:
        return f"branch {shown(branch)}: {problem}; {RULE}"
    problem = revision_problem(revision)
    if problem is not None:
        return f"revision {shown(revision)}: {problem}"
    return None


def _when(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def spooled_repos(settings: Settings) -> list[dict[str, str]]:
    """The hosted repositories whose spools the master drains (plain data, for reconfig)."""
    return [
        {"name": r.name, "url": r.url, "spool": str(spool.spool_dir(r.path)),
         "scheduler": push_scheduler_name(r)}
        for r in settings.repos if r.hosted and r.path is not None
    ]


class PushSpoolService(service.BuildbotService):
    """Adds spooled pushes as changes (see the module docstring)."""

    name = "ktstr-push-spool"
    _in_flight: defer.Deferred | None = None
    _soon: Any = None

    def checkConfig(self, repos: list[dict[str, str]], interval: float = DRAIN_INTERVAL_S) -> None:
        if interval <= 0:
            from buildbot.config.errors import error

            error(f"{self.name}: interval must be positive, not {interval}")

    def reconfigService(self, repos: list[dict[str, str]], interval: float = DRAIN_INTERVAL_S):
        old = getattr(self, "interval", None)
        self.repos = [dict(r) for r in repos]
        self.interval = float(interval)
        self._waiting_logged: set[str] = set()
        if self.running and old != self.interval:
            self._stop_loop()
            self._start_loop()
        return defer.succeed(None)

    @defer.inlineCallbacks
    def startService(self):
        yield super().startService()  # configures the service first
        self._start_loop()

    @defer.inlineCallbacks
    def stopService(self):
        self._stop_loop()
        if self._in_flight is not None:
            # A change being added completes (and its file goes) before the master stops.
            yield self._in_flight
        yield super().stopService()

    def _tick(self):
        if self._in_flight is not None:
            return None  # one pass at a time
        self._in_flight = self.drain()

        def done(result: Any) -> Any:
            self._in_flight = None
            return result

        self._in_flight.addBoth(done)
        return self._in_flight

    def _check_soon(self) -> None:
        # The master is still starting: look again in a moment, not a whole interval later.
        if self._soon is None or not self._soon.active():
            self._soon = self.master.reactor.callLater(READY_RECHECK_S, self._tick_if_idle)

    def _tick_if_idle(self) -> None:
        if self.running:
            self._tick()

    def _start_loop(self) -> None:
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.master.reactor
        d = self._loop.start(self.interval, now=True)
        d.addErrback(log.err, "ktstr-ci: push spool drain loop")

    def _stop_loop(self) -> None:
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        loop, self._loop = getattr(self, "_loop", None), None
        if loop is not None and loop.running:
            loop.stop()

    # -- draining -------------------------------------------------------------

    def ready(self, repo: dict[str, str]) -> bool:
        """True once a change added now reaches the repository's push scheduler."""
        sched = self.master.scheduler_manager.namedServices.get(repo["scheduler"])
        if sched is not None and sched.isActive() and getattr(sched, "_change_consumer", True):
            return True
        # On another master of a cluster the scheduler consumes through the mq
        # once this master has finished starting.
        return bool(getattr(self.master, "_master_initialized", False))

    @defer.inlineCallbacks
    def drain(self):
        """One pass over every spool; never raises (the loop must go on)."""
        added = 0
        for repo in self.repos:
            try:
                added += yield self.drain_repo(repo)
            except Exception as exc:  # noqa: BLE001 - keep draining the next time
                log.err(exc, f"ktstr-ci: draining the push spool of {repo['name']}")
        return added

    @defer.inlineCallbacks
    def drain_repo(self, repo: dict[str, str]):
        sdir = Path(repo["spool"])
        spool.remove_stale_tmp(sdir)
        if not spool.pending(sdir):
            return 0
        fd = spool.try_lock_drain(sdir)
        if fd is None:
            return 0  # another master drains it now
        try:
            added = yield self._drain_locked(repo, sdir)
        finally:
            spool.unlock_drain(fd)
        return added

    @defer.inlineCallbacks
    def _drain_locked(self, repo: dict[str, str], sdir: Path):
        entries = spool.pending(sdir)
        if not entries:
            return 0
        if not self.ready(repo):
            self._check_soon()
            if repo["name"] not in self._waiting_logged:
                self._waiting_logged.add(repo["name"])
                log.msg(f"ktstr-ci: {len(entries)} spooled push(es) of {repo['name']} wait for "
                        f"the scheduler {repo['scheduler']} to start")
            return 0
        for e in entries:
            if e.change is None:
                dest = spool.reject(e.path, e.error or "unreadable")
                log.msg(f"ktstr-ci: rejected spooled push {e.path.name} ({e.error}); "
                        f"moved to {dest}")
        added = 0
        for batch in spool.plan(entries):
            if batch.newest is None:
                log.msg(f"ktstr-ci: spooled push(es) of {repo['name']} branch {batch.branch} "
                        "dropped: the branch was deleted afterwards")
                spool.remove(batch.files)
                continue
            change = batch.newest.change or {}
            why = check_change(change)
            if why is not None:
                for path in batch.files:
                    spool.reject(path, why)
                log.msg(f"ktstr-ci: rejected spooled push(es) of {repo['name']}: {why}; moved "
                        f"to {sdir / spool.REJECTED}")
                continue
            skip = yield self._already_stored(repo, change)
            if skip:
                log.msg(f"ktstr-ci: spooled push of {repo['name']} {batch.branch} at "
                        f"{change['revision'][:12]} was delivered already (only the answer to "
                        "the hook's POST was lost); not added again")
            else:
                yield self.add(repo, change)
                added += 1
                log.msg(f"ktstr-ci: added spooled push of {repo['name']} {batch.branch} at "
                        f"{change['revision'][:12]} (spooled because: {change.get('reason')}"
                        + (f"; {len(batch.files) - 1} older queued push(es) superseded"
                           if len(batch.files) > 1 else "") + ")")
            spool.remove(batch.files)
        self._waiting_logged.discard(repo["name"])
        return added

    @defer.inlineCallbacks
    def _already_stored(self, repo: dict[str, str], change: dict[str, Any]):
        if change.get("delivery") != spool.DELIVERY_UNKNOWN:
            return False
        newest = yield self.master.data.get(
            ("changes",),
            filters=[resultspec.Filter("repository", "eq", [repo["url"]]),
                     resultspec.Filter("branch", "eq", [change["branch"]])],
            order=["-changeid"], limit=1,
        )
        return bool(newest) and newest[0].get("revision") == change["revision"]

    def add(self, repo: dict[str, str], change: dict[str, Any]):
        """Add one change, with the fields the hook would have posted."""
        return self.master.data.updates.addChange(
            author=_text(change.get("author")),
            committer=_text(change.get("committer")),
            files=[],
            comments=_text(change.get("comments")),
            revision=change["revision"],
            when_timestamp=_when(change.get("when_timestamp")),
            branch=change["branch"],
            category=_text(change.get("category")) or "push",
            revlink="",
            properties={},
            repository=repo["url"],
            codebase="",
            project=repo["name"],
        )


def config_part(settings: Settings) -> ConfigPart:
    """The drain service, when a repository is hosted here."""
    repos = spooled_repos(settings)
    return ConfigPart(feature="push spool",
                      services=[PushSpoolService(repos=repos)] if repos else [])
