"""The network half of ``ktstr-ci try``: send the job over Buildbot's try PB port, then follow
the build through the web UI's REST API until it ends.

Sending is Buildbot's own try protocol (what ``buildbot try --connect=pb`` does:
log in to the ``Try_Userpass`` scheduler, call ``try``), with every wait
bounded: Buildbot 4.3's own client never exits after a refused login. The job's
comment carries a random token, so its buildset is found by its reason in the
REST API (the PB answer names no ids), and the build is followed there:
anonymous read access to the web UI is the default.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ktstr_steps.errors import KtstrError

CONNECT_TIMEOUT = 10.0
CALL_TIMEOUT = 60.0
# How long the REST API may fail in a row (a master restart) before giving up.
API_OUTAGE = 60.0
RESULTS = ("success", "warnings", "failure", "skipped", "exception", "retry", "cancelled")


@dataclass(frozen=True)
class TryJob:
    host: str
    port: int
    user: str
    password: str
    branch: str
    revision: str | None
    patch: bytes
    patch_level: int
    builder: str
    who: str
    comment: str

    @property
    def reason(self) -> str:
        """The buildset reason Buildbot's try scheduler makes of who and comment."""
        return f"'try' job by user {self.who} ({self.comment})"


def send(job: TryJob) -> bool:
    """Send the job; True when the master took it, False for an unknown builder.

    Runs the reactor for the one call (it cannot be restarted: once per process).
    """
    from twisted.cred import credentials
    from twisted.cred.error import UnauthorizedLogin
    from twisted.internet import defer, reactor
    from twisted.spread import pb

    where = f"{job.host}:{job.port}"
    outcome: dict[str, Any] = {}

    async def call() -> Any:
        factory = pb.PBClientFactory()
        reactor.connectTCP(job.host, job.port, factory, timeout=CONNECT_TIMEOUT)
        try:
            login = factory.login(credentials.UsernamePassword(job.user.encode(),
                                                              job.password.encode()))
            perspective = await login.addTimeout(CONNECT_TIMEOUT + CALL_TIMEOUT, reactor)
            answer = perspective.callRemote(
                "try", job.branch, job.revision or "", (job.patch_level, job.patch), "", "",
                [job.builder], job.who, job.comment, {})
            return await answer.addTimeout(CALL_TIMEOUT, reactor)
        finally:
            factory.disconnect()

    def done(result: Any) -> None:
        outcome["result"] = result
        reactor.callLater(0, reactor.stop)

    def start() -> None:
        defer.ensureDeferred(call()).addBoth(done)

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    result = outcome.get("result")
    if not isinstance(result, Exception) and not hasattr(result, "check"):
        return result is not None
    failure = result
    # A refusal on the master's side arrives as a copy of its exception: its type by name.
    names = " ".join(str(x) for x in (getattr(failure, "type", ""),
                                      getattr(failure.value, "remoteType", b"")))
    if failure.check(UnauthorizedLogin) or "UnauthorizedLogin" in names:
        raise KtstrError(f"the try port {where} refused the login of user {job.user!r}: "
                         "wrong user or password", kind="try-refused")
    if failure.check(defer.TimeoutError, defer.CancelledError):
        raise KtstrError(f"the try port {where} did not answer within "
                         f"{CONNECT_TIMEOUT + CALL_TIMEOUT:.0f}s", kind="try-failed")
    text = str(failure.value) or failure.getErrorMessage() or type(failure.value).__name__
    marker = "ktstr-ci refused the try job: "
    if marker in text:
        raise KtstrError(text[text.index(marker):].splitlines()[0], kind="try-refused")
    if "refused" in text.lower() and "connect" in text.lower():
        text = "connection refused: is the master running, with [try] port set?"
    lines = text.strip().splitlines() or ["unknown error"]
    raise KtstrError(f"try port {where}: {lines[-1]}", kind="try-failed")


class Api:
    """GETs of the master's REST API (``<web>api/v2/...``), bounded and tolerant of restarts."""

    def __init__(self, web_url: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.web = web_url if web_url.endswith("/") else web_url + "/"
        self.clock = clock
        self._failing_since: float | None = None

    def get(self, path: str, **query: Any) -> list[dict[str, Any]] | None:
        """The answer's list for ``path``, or None while the API fails (for API_OUTAGE)."""
        url = f"{self.web}api/v2/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise KtstrError(f"the web UI at {self.web} refused to show the build "
                                 f"(HTTP {exc.code}): set [web] anonymous_read = true, "
                                 "or follow it in the UI", kind="try-failed") from None
            return self._failed(f"HTTP {exc.code}")
        except (OSError, ValueError) as exc:
            return self._failed(str(getattr(exc, "reason", exc)))
        self._failing_since = None
        key = path.rstrip("/").split("/")[-1]
        if not key.isalpha():  # builds/<id>: the list is named by the collection
            key = path.split("/")[0]
        return body.get(key, [])

    def _failed(self, why: str) -> None:
        now = self.clock()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since > API_OUTAGE:
            raise KtstrError(f"the web UI at {self.web} has not answered for "
                             f"{API_OUTAGE:.0f}s ({why})", kind="try-failed")
        return None


def follow(api: Api, job: TryJob, *, timeout: float, interval: float = 1.0,
           out: Callable[[str], None] | None = None,
           url_out: Callable[[str], None] | None = None) -> int:
    """Wait for the job's build, show its steps, return Buildbot's result code."""
    say = out or (lambda line: print(line, file=sys.stderr, flush=True))
    show_url = url_out or (lambda line: print(line, flush=True))
    deadline = time.monotonic() + timeout

    def poll(what: str, fn: Callable[[], Any]) -> Any:
        while time.monotonic() < deadline:
            got = fn()
            if got:
                return got
            time.sleep(interval)
        raise KtstrError(f"gave up after {timeout:g}s waiting for {what}", kind="try-failed")

    bset = poll("the try job's buildset", lambda: api.get("buildsets", reason=job.reason))[-1]
    req = poll("its build request",
               lambda: api.get("buildrequests", buildsetid=bset["bsid"]))[0]
    say(f"queued: {api.web}#/buildrequests/{req['buildrequestid']}")
    build = poll("the build to start",
                 lambda: api.get("builds", buildrequestid=req["buildrequestid"]))[0]
    show_url(f"{api.web}#/builders/{build['builderid']}/builds/{build['number']}")
    seen: dict[int, tuple[str, Any]] = {}
    shown_at = 0.0
    while True:
        steps = api.get(f"builds/{build['buildid']}/steps") or []
        for step in steps:
            state = (step.get("state_string") or "", step.get("results"))
            old = seen.get(step["stepid"])
            if old == state or (not step.get("started_at")):
                continue
            seen[step["stepid"]] = state
            if step.get("complete"):
                word = RESULTS[step["results"]] if step["results"] in range(len(RESULTS)) else "?"
                say(f"{step['name']}: {state[0]} ({word})")
            elif state[0] not in ("", "pending") and time.monotonic() - shown_at >= 2:
                # A running step's progress line, at most one every 2 s.
                shown_at = time.monotonic()
                say(f"{step['name']}: {state[0]}")
        now = api.get(f"builds/{build['buildid']}") or [build]
        if now[0].get("complete"):
            result = now[0].get("results")
            word = RESULTS[result] if result in range(len(RESULTS)) else "?"
            say(f"build {word}: {now[0].get('state_string') or ''}")
            return int(result) if isinstance(result, int) else 2
        if time.monotonic() > deadline:
            raise KtstrError(f"gave up following after {timeout:g}s; the build goes on: "
                             f"{api.web}#/builders/{build['builderid']}/builds/{build['number']}",
                             kind="try-failed")
        time.sleep(interval)
