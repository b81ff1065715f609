"""What the web server refuses before Buildbot sees a request.

:class:`GuardedRequest` is the Twisted request class of Buildbot's web site
(installed by :class:`SiteAuth`, see below). It refuses two kinds of input
that Buildbot itself mishandles:

* **Bodies over a size limit: 413.** Twisted reads a whole request body before
  any resource runs and parses a form body into memory; Buildbot's change hook
  then stored it (a 20 MB change added 125 MB to the master and was served in
  every changes listing). A body is counted as it arrives: past
  :data:`SITE_BODY_LIMIT` (declared by Content-Length, or as received when
  chunked) the rest is discarded unstored, and ``/change_hook/base`` bodies
  over :data:`HOOK_BODY_LIMIT` are never parsed. The answer is 413 with the
  limit in the message.
* **Numbers that cannot be a SQL integer in the REST API: 400/404.** Buildbot's
  ``/api/v2`` passes ``limit=99999999999999999999`` or ``/builds/99999…`` to the
  database, which fails with an overflow and a 500. Ids and limits above
  2**63-1 name nothing: a path segment of that kind is a 404 (no such object),
  a ``limit``/``offset`` or ``…id``/``number`` filter a 400 naming the range.

:class:`SiteAuth` is ``www['auth']`` (Buildbot's user/password login) plus
the installation of :class:`GuardedRequest` on the site: Buildbot calls
``reconfigAuth`` with the master after it has built the site and before it
listens, on start and on every reconfig, and offers no other configuration
point for the site's request class.
"""

from __future__ import annotations

import json
import re
from io import BytesIO
from typing import Any
from urllib.parse import parse_qsl, unquote

from buildbot.www.auth import UserPasswordAuth
from twisted.web import server

MiB = 1024 * 1024
# GitHub caps webhook payloads at 25 MB; nothing else posts more than a few KiB.
SITE_BODY_LIMIT = 25 * MiB
# One change: the post-receive hook sends a commit's metadata, a few KiB.
HOOK_BODY_LIMIT = 1 * MiB
SQL_INT_MAX = 2**63 - 1
_HOOK_BASE = re.compile(rb"^/change_hook(/base)?/?$")
_NUMBER = re.compile(r"-?[0-9]+")
_INT_QUERY = re.compile(r"^(limit|offset|number|.*id)(__[a-z]+)?$")


def body_limit(path: bytes) -> int:
    """The largest body accepted for ``path`` (without the query)."""
    return HOOK_BODY_LIMIT if _HOOK_BASE.match(path) else SITE_BODY_LIMIT


def rest_problem(path: bytes, query: str) -> tuple[int, str] | None:
    """(status, message) for a REST request naming a number no SQL integer can hold."""
    if not path.startswith(b"/api/"):
        return None
    for segment in path.split(b"/"):
        text = unquote(segment.decode("latin-1"))
        if _NUMBER.fullmatch(text) and abs(int(text)) > SQL_INT_MAX:
            return 404, f"not found: no object has the id {text[:40]}"
    for key, value in parse_qsl(query, keep_blank_values=True):
        if not _INT_QUERY.match(key):
            continue
        for part in value.split(","):
            if _NUMBER.fullmatch(part.strip()) and abs(int(part)) > SQL_INT_MAX:
                return 400, (f"{key}={part[:40]} is out of range: numbers in the API are "
                             f"from -{SQL_INT_MAX} to {SQL_INT_MAX}")
    return None


class GuardedRequest(server.Request):
    """A request that counts its body and refuses what the module docstring says."""

    _too_large: bool = False
    _received: int = 0
    _declared: int | None = None
    _limit: int = SITE_BODY_LIMIT

    def gotLength(self, length: int | None) -> None:
        self._declared = length
        if length is not None and length > SITE_BODY_LIMIT:
            self._discard()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._too_large:
            return
        if self._received > SITE_BODY_LIMIT:
            self._discard()
            return
        super().handleContentChunk(data)

    def _discard(self) -> None:
        self._too_large = True
        old = getattr(self, "content", None)
        if old is not None:
            old.close()
        self.content = BytesIO()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # Decided before Twisted parses a form body into memory (in the super call).
        size = max(self._received, self._declared or 0)
        self._limit = body_limit(path.split(b"?", 1)[0])
        if size > self._limit and not self._too_large:
            self._discard()
        super().requestReceived(command, path, version)

    def process(self) -> None:
        refusal: tuple[int, str] | None = None
        if self._too_large:
            size = max(self._received, self._declared or 0)
            refusal = (413, f"request body of {size} bytes is over the limit of {self._limit} "
                            f"bytes for {self.path.decode('latin-1')[:80]}; send less")
        else:
            query = self.uri.split(b"?", 1)[1].decode("latin-1") if b"?" in self.uri else ""
            refusal = rest_problem(self.path, query)
        if refusal is None:
            super().process()
            return
        code, message = refusal
        self.site = self.channel.site
        self.setResponseCode(code)
        if self.path.startswith(b"/api/"):
            body = json.dumps({"error": message}).encode()
            self.setHeader(b"Content-Type", b"application/json")
        else:
            body = (message + "\n").encode()
            self.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        self.setHeader(b"Content-Length", str(len(body)).encode())
        self.write(body)
        self.finish()


class SiteAuth(UserPasswordAuth):
    """Buildbot's user/password auth that also installs :class:`GuardedRequest`."""

    def reconfigAuth(self, master: Any, new_config: Any) -> None:
        super().reconfigAuth(master, new_config)
        site = getattr(getattr(master, "www", None), "site", None)
        if site is not None:
            site.requestFactory = GuardedRequest
