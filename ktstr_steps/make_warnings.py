"""make's warnings as data: ``{"file", "line", "message"}`` each, deduplicated.

kbuild compiles a header's code once per file that includes it, so one
warning in a header comes out many times; the build keeps it once. A tool's
warning without a source position (``ld: warning: ...``, modpost) keeps the
tool as its file and no line.
"""

from __future__ import annotations

import re
from typing import Any

from ktstr_steps.kbuild import classify_line

# A build that floods warnings still answers with a bounded JSON object.
MAX_WARNINGS = 1000

_POSITIONED = re.compile(
    r"^(?P<file>[^:\s][^:]*?):(?P<line>\d+):(?:\d+:)? (?:warning|Warning): (?P<message>.*)$"
)
_TOOL = re.compile(r"^(?P<file>[^:\s]+): (?:warning: )?(?:objtool: )?(?P<message>.*)$")
_MODPOST = re.compile(r"^WARNING: modpost: (?P<message>.*)$")


def parse_warning(line: str) -> dict[str, Any] | None:
    """One make output line as a warning record, or None when it is not a warning."""
    line = line.rstrip()
    if classify_line(line) != "warning":
        return None
    m = _POSITIONED.match(line)
    if m:
        return {"file": m.group("file"), "line": int(m.group("line")),
                "message": m.group("message").strip()}
    m = _MODPOST.match(line)
    if m:
        return {"file": "modpost", "line": None, "message": m.group("message").strip()}
    m = _TOOL.match(line)
    if m:
        return {"file": m.group("file"), "line": None, "message": m.group("message").strip()}
    return {"file": None, "line": None, "message": line}


class WarningCollector:
    """Fed make's lines one by one (``run_make_streamed(on_line=...)``); keeps each warning once."""

    def __init__(self, limit: int = MAX_WARNINGS) -> None:
        self.limit = limit
        self._seen: set[tuple[Any, Any, str]] = set()
        self.items: list[dict[str, Any]] = []

    def __call__(self, line: str) -> None:
        w = parse_warning(line)
        if w is None:
            return
        key = (w["file"], w["line"], w["message"])
        if key in self._seen or len(self.items) >= self.limit:
            return
        self._seen.add(key)
        self.items.append(w)


def warning_keys(warnings: list[dict[str, Any]] | None) -> set[tuple[Any, str]]:
    """(file, message) of each warning: what stays the same when a line moves."""
    out: set[tuple[Any, str]] = set()
    for w in warnings or []:
        if isinstance(w, dict):
            out.add((w.get("file"), str(w.get("message", ""))))
    return out


def new_warnings(current: list[dict[str, Any]] | None,
                 previous: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Warnings of ``current`` that ``previous`` did not have, compared by file and message
    (line numbers ignored), as ``[{"file", "message"}]`` in ``current``'s order."""
    before = warning_keys(previous)
    out: list[dict[str, Any]] = []
    seen: set[tuple[Any, str]] = set()
    for w in current or []:
        if not isinstance(w, dict):
            continue
        key = (w.get("file"), str(w.get("message", "")))
        if key in before or key in seen:
            continue
        seen.add(key)
        out.append({"file": key[0], "message": key[1]})
    return out
