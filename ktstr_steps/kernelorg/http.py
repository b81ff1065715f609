"""HTTP to kernel.org and its mirrors: one place for urllib, its errors, the timeout,
content checks, and a body reader that hashes and reports progress as it goes.

This is synchronous code run by the ``ktstr-ci`` worker command, so it uses
``urllib.request`` (which honours HTTP(S)_PROXY / NO_PROXY like ktstr's
client). The 10 s timeout is a socket timeout: it bounds the connect and every
stall between reads, never the whole transfer, so a slow but moving download
of a 150 MB tarball is not cut off (ktstr: connect timeout, no total timeout).

Callers turn :class:`HttpStatus` and :class:`Unreachable` into their own
messages: what failed and what to check differs between releases.json, a probe,
a tarball and a checksum file.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from typing import Any

from ktstr_steps.messages import LABEL, Progress, say

TIMEOUT = 10.0
CHUNK = 1 << 16
USER_AGENT = f"{LABEL} (kernel source acquisition)"


class HttpStatus(Exception):
    """The server answered with an HTTP error status."""

    def __init__(self, url: str, code: int) -> None:
        super().__init__(f"{url}: HTTP {code}")
        self.code = code


class Unreachable(Exception):
    """No answer: DNS, refused, reset, timeout, a malformed URL."""

    def __init__(self, url: str, reason: object) -> None:
        super().__init__(f"{url}: {reason}")
        self.reason = reason


def open_url(url: str, *, method: str = "GET") -> Any:
    """The open response (a context manager), or :class:`HttpStatus` / :class:`Unreachable`."""
    req = urllib.request.Request(url, method=method, headers={"User-Agent": USER_AGENT})
    try:
        return urllib.request.urlopen(req, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        e.close()
        raise HttpStatus(url, e.code) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise Unreachable(url, getattr(e, "reason", e)) from None


def get(url: str) -> tuple[str | None, bytes]:
    """(Content-Type, body) of a small document such as releases.json or sha256sums.asc."""
    with open_url(url) as resp:
        ctype = resp.headers.get("Content-Type")
        try:
            return ctype, resp.read()
        except (OSError, ValueError) as e:  # http.client.IncompleteRead is a ValueError
            raise Unreachable(url, e) from None


def is_html(content_type: str | None) -> bool:
    """An HTML page where a file was expected: a wrong URL behind a friendly error page."""
    return "text/html" in (content_type or "").lower()


def content_length(resp: Any) -> int | None:
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def announce(url: str, total: int | None) -> None:
    """``downloading <url> (N MB)``: the line every download starts with."""
    say(f"downloading {url}" + (f" ({total / 1e6:.1f} MB)" if total else ""))


def describe(done: int, total: int | None) -> str:
    """Progress text: ``42% (63.0/150.1 MB)``, or ``63.0 MB`` without a known size."""
    mb = done / 1e6
    if total:
        return f"{100 * done // total}% ({mb:.1f}/{total / 1e6:.1f} MB)"
    return f"{mb:.1f} MB"


class HashingReader:
    """File-like view of an HTTP body that hashes (sha256), counts and reports progress.

    Whatever reads the body through it (a file copy, tarfile's stream mode)
    gets the file's sha256 and size for free, and the progress line moves.
    """

    def __init__(self, raw: Any, total: int | None, progress: Progress) -> None:
        self.raw = raw
        self.total = total
        self.progress = progress
        self.sha256 = hashlib.sha256()
        self.done = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n if n is not None and n >= 0 else CHUNK)
        if data:
            self.sha256.update(data)
            self.done += len(data)
            if self.total is None or self.done < self.total:  # 100% is forced by finish()
                self.progress.update(self.describe())
        return data

    def describe(self) -> str:
        return describe(self.done, self.total)

    def finish(self) -> None:
        """The last progress line, whatever the rate limit, and the end of the progress."""
        self.progress.update(self.describe(), force=True)
        self.progress.done()

    def complete(self) -> bool:
        """Whether as many bytes arrived as the server announced (always, if it did not)."""
        return self.total is None or self.done == self.total
