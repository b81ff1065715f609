"""What ktstr-ci says on stderr: the label, diagnostic and warning lines, progress lines.

Every human line starts with ``ktstr-ci: `` (ktstr's ``LABEL: ...`` form with
our label); data goes to stdout, never through here.
"""

from __future__ import annotations

import sys
import time

LABEL = "ktstr-ci"


def say(msg: str) -> None:
    """A human diagnostic line on stderr, prefixed with the label (ktstr's "LABEL: ..." form)."""
    print(f"{LABEL}: {msg}", file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    """A warning on stderr; steps count lines starting with ``ktstr-ci: warning:``."""
    print(f"{LABEL}: warning: {msg}", file=sys.stderr, flush=True)


class Progress:
    """Progress for long work (download, configure, make) on stderr.

    Lines have the fixed shape ``ktstr-ci: progress: <phase>: <text>`` so a
    Buildbot step can show the text in its status line; on a terminal they
    rewrite one line instead. Updates are rate-limited to ``interval`` seconds
    so a make log of 50k lines does not turn into 50k progress lines.
    """

    def __init__(self, phase: str, *, interval: float = 1.0, stream=None) -> None:
        self.phase = phase
        self.interval = interval
        self.stream = stream or sys.stderr
        self._last = 0.0
        self._tty = self.stream.isatty()
        self._dirty = False

    def update(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        line = f"{LABEL}: progress: {self.phase}: {text}"
        if self._tty:
            self.stream.write("\r\x1b[K" + line)
            self._dirty = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self, text: str | None = None) -> None:
        if self._tty and self._dirty:
            self.stream.write("\r\x1b[K")
            self._dirty = False
        if text:
            self.stream.write(f"{LABEL}: {text}\n")
        self.stream.flush()
