"""What ktstr-ci says: the label, diagnostic and warning lines, progress, the JSON answer.

Two routes. On a terminal (the default) every human line goes to stderr and
data to stdout. With a result file (``ktstr-ci --result-file FILE ...``, what
the Buildbot steps run) the human output goes to stdout, only warnings and
errors to stderr, and progress events and the JSON answer go to FILE as JSON
lines: Buildbot marks everything on stderr as an error, so a make log on
stderr would read as 400 errors, and progress lines would clutter it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

LABEL = "ktstr-ci"

_PROGRESS_LINE = re.compile(rf"^{LABEL}: progress: ([^:]+): (.*)$")
# Our own warnings and errors, and any tool's "warning:"/"error:" diagnostic.
_PROBLEM_LINE = re.compile(rf"^{LABEL}: (warning|error): |(^|: )(warning|error|fatal error): ",
                           re.IGNORECASE)


class _Route:
    """Where this process's output goes (module state: one route per command)."""

    result_file: Path | None = None
    # (ctime, mtime, size) of a stale result file, in whole seconds as Buildbot's
    # worker compares them: it only sends a watched file once these change.
    stale_stat: tuple[int, int, int] | None = None


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        s = path.stat()
    except OSError:
        return None
    return int(s.st_ctime), int(s.st_mtime), s.st_size


def use_result_file(path: Path) -> None:
    """Route this command's output for a Buildbot step: see the module docstring.

    A stale file is replaced by an empty one at once, so a command that dies
    early never leaves the previous run's answer behind. OSError when FILE
    cannot be written.
    """
    path = Path(path)
    stale = _stat(path)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    path.open("w", encoding="utf-8").close()
    _Route.stale_stat = stale
    _Route.result_file = path


def reset_route() -> None:
    """Back to the terminal route (tests run several commands in one process)."""
    _Route.result_file = None
    _Route.stale_stat = None


def result_file() -> Path | None:
    return _Route.result_file


def human_stream() -> TextIO:
    """Where ordinary human lines go: stderr on a terminal, stdout for a step."""
    return sys.stdout if _Route.result_file is not None else sys.stderr


def is_problem(line: str) -> bool:
    """A warning or error line (ours or a tool's), which a step log shows marked."""
    return bool(_PROBLEM_LINE.search(line))


def human_line(line: str, *, problem: bool | None = None) -> None:
    """One line of human output; warnings and errors on stderr in either route."""
    if problem is None:
        problem = is_problem(line)
    stream = sys.stderr if problem else human_stream()
    stream.write(line + "\n")
    stream.flush()


def relay(text: str) -> None:
    """Human text from another process (the holder): each line routed as our own."""
    for line in text.splitlines():
        match = _PROGRESS_LINE.match(line)
        if match and _Route.result_file is not None:
            _append({"progress": {"phase": match.group(1), "text": match.group(2)}})
        else:
            human_line(line)


def say(msg: str) -> None:
    """A human diagnostic line, prefixed with the label (ktstr's "LABEL: ..." form)."""
    human_line(f"{LABEL}: {msg}")


def warn(msg: str) -> None:
    """A warning on stderr; steps count lines starting with ``ktstr-ci: warning:``."""
    human_line(f"{LABEL}: warning: {msg}", problem=True)


def emit_json(obj: Any, *, indent: int | None = None, sort_keys: bool = False) -> None:
    """The command's JSON answer: on stdout, or as the result file's last line."""
    if _Route.result_file is None:
        print(json.dumps(obj, indent=indent, sort_keys=sort_keys), flush=True)
        return
    _append(obj, sort_keys=sort_keys)
    path = _Route.result_file
    if _Route.stale_stat is not None and _stat(path) == _Route.stale_stat:
        # Same second and same size as the file it replaces: the worker would
        # take it for unchanged and never send it. An older mtime tells them apart.
        mtime = _Route.stale_stat[1] - 1
        os.utime(path, (mtime, mtime))


def _append(obj: Any, *, sort_keys: bool = False) -> None:
    assert _Route.result_file is not None
    with open(_Route.result_file, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, sort_keys=sort_keys) + "\n")


class Progress:
    """Progress for long work (download, configure, make).

    On a terminal: one line rewritten in place; elsewhere lines of the fixed
    shape ``ktstr-ci: progress: <phase>: <text>`` on stderr; with a result
    file, ``{"progress": {"phase", "text"}}`` events in it, which a step
    shows in its status line and keeps out of its log. Updates are
    rate-limited to ``interval`` seconds so a make log of 50k lines does not
    turn into 50k progress lines.
    """

    def __init__(self, phase: str, *, interval: float = 1.0, stream: TextIO | None = None) -> None:
        self.phase = phase
        self.interval = interval
        self._own_stream = stream is None
        self.stream = stream or sys.stderr
        self._last = 0.0
        self._tty = self.stream.isatty()
        self._dirty = False

    def _to_result_file(self) -> bool:
        return self._own_stream and _Route.result_file is not None

    def update(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if self._to_result_file():
            _append({"progress": {"phase": self.phase, "text": text}})
            return
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
            stream = human_stream() if self._to_result_file() else self.stream
            stream.write(f"{LABEL}: {text}\n")
            stream.flush()
        else:
            self.stream.flush()
