"""Chart.js chart specs of a series of builds, drawn in the browser by ``static/scripts.js``.

A spec is Chart.js's own ``{"type", "data", "options"}`` as JSON, put on a
``<canvas data-chart=...>`` with the builds' links beside it
(``data-links``), so the page needs no per-chart code and a script (or a
test) can read every point from the page. Every dataset has one value per
build, oldest first; an unknown value is null, which Chart.js leaves as a gap.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from markupsafe import Markup, escape

from ktstr_steps.results import PHASES
from master.webui import facts

# One colour per phase (stack order = pipeline order) and per size series.
PHASE_COLOURS: dict[str, str] = dict(
    zip(
        PHASES,
        ("#90a4ae", "#b0bec5", "#4db6ac", "#7986cb", "#e57373", "#ffb74d", "#a1887f", "#81c784"),
        strict=False,
    )
)
SIZE_SERIES: tuple[tuple[str, str, str], ...] = (
    ("bzimage_bytes", "bzImage", "#1565c0"),
    ("vmlinux_bytes", "vmlinux", "#6a1b9a"),
    ("vmlinux_stripped_bytes", "vmlinux (stripped)", "#00897b"),
)
MIB = 1024 * 1024

Label = Callable[[Mapping[str, Any]], str]


def build_label(row: Mapping[str, Any]) -> str:
    """A point's label: the build number and the commit, e.g. ``#7 0123456``."""
    number = row.get("build_number") if row.get("build_number") is not None else row.get("buildid")
    rev = (row.get("revision") or "")[:7]
    return " ".join(x for x in (f"#{number}" if number is not None else "", rev) if x) or "?"


def branch_label(row: Mapping[str, Any]) -> str:
    """A label across branches: the branch, then the build."""
    return f"{row.get('branch') or '?'} {build_label(row)}"


def _axes(y_title: str, stacked: bool = False) -> dict[str, Any]:
    return {
        "x": {"stacked": stacked, "ticks": {"autoSkip": True, "maxRotation": 60}},
        "y": {"stacked": stacked, "beginAtZero": True, "title": {"display": True, "text": y_title}},
    }


def _spec(kind: str, labels: list[str], datasets: list[dict[str, Any]],
          options: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    base = {"responsive": True, "maintainAspectRatio": False, "animation": False}
    return {"type": kind, "data": {"labels": labels, "datasets": datasets},
            "options": {**base, **options}}  # fmt: skip


def phases_chart(builds: Sequence[Mapping[str, Any]], label: Label = build_label) -> dict[str, Any]:
    """Seconds per phase, stacked: one bar per build."""
    datasets = [
        {"label": p, "data": [b.get(f"{p}_s") for b in builds],
         "backgroundColor": PHASE_COLOURS.get(p, "#9e9e9e"), "stack": "phases"}
        for p in PHASES
    ]  # fmt: skip
    return _spec("bar", [label(b) for b in builds], datasets,
                 {"scales": _axes("seconds", stacked=True)})  # fmt: skip


def warnings_chart(builds: Sequence[Mapping[str, Any]], label: Label = build_label) -> dict[str, Any]:
    """Make warnings per build, and how many of them are new against the previous build."""
    datasets = [
        {"label": "make warnings", "data": [b.get("make_warnings") for b in builds],
         "borderColor": "#ef6c00", "backgroundColor": "#ef6c00", "spanGaps": False},
        {"label": "new warnings",
         "data": [len(facts.new_warnings(b)) if b.get("new_warnings") is not None else None
                  for b in builds],
         "borderColor": "#c62828", "backgroundColor": "#c62828", "spanGaps": False},
    ]  # fmt: skip
    return _spec("line", [label(b) for b in builds], datasets, {"scales": _axes("warnings")})


def _mib(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return round(value / MIB, 3)
    return None


def sizes_chart(builds: Sequence[Mapping[str, Any]], label: Label = build_label) -> dict[str, Any]:
    """bzImage and vmlinux sizes (MiB) per build."""
    datasets = [
        {"label": name, "data": [_mib(b.get(field)) for b in builds],
         "borderColor": colour, "backgroundColor": colour, "spanGaps": False}
        for field, name, colour in SIZE_SERIES
    ]  # fmt: skip
    return _spec("line", [label(b) for b in builds], datasets, {"scales": _axes("MiB")})


def sparkline(builds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The overview's small trend: build time (minutes) and make warnings, no axes."""
    total = [facts.total_seconds(b) for b in builds]
    datasets = [
        {"label": "build minutes", "data": [round(t / 60, 2) if t is not None else None
                                            for t in total],
         "borderColor": "#1565c0", "yAxisID": "y", "pointRadius": 2, "borderWidth": 1.5},
        {"label": "make warnings", "data": [b.get("make_warnings") for b in builds],
         "borderColor": "#ef6c00", "yAxisID": "y1", "pointRadius": 2, "borderWidth": 1.5},
    ]  # fmt: skip
    hidden = {"display": False, "beginAtZero": True}
    return _spec("line", [build_label(b) for b in builds], datasets, {
        "scales": {"x": {"display": False}, "y": hidden, "y1": hidden},
        "plugins": {"legend": {"display": False}},
    })  # fmt: skip


def describe(spec: Mapping[str, Any]) -> str:
    """A plot in words, for readers that cannot see it: its series and how many builds."""
    data = spec.get("data", {})
    names = ", ".join(str(d.get("label")) for d in data.get("datasets", []))
    return f"{names} over {len(data.get('labels', []))} builds"


def canvas(spec: Mapping[str, Any], links: Sequence[str | None], *, name: str,
           height: int = 260, width: int | None = None) -> Markup:  # fmt: skip
    """The ``<canvas>`` that ``scripts.js`` draws ``spec`` on; ``links[i]`` is point i's build."""
    style = f"height:{height}px" + (f";width:{width}px" if width else "")
    return Markup(
        f'<div class="kchart kchart-{escape(name)}" style="{style}">'
        f'<canvas data-chart-name="{escape(name)}" data-chart="{escape(json.dumps(spec))}" '
        f'data-links="{escape(json.dumps(list(links)))}" role="img" '
        f'aria-label="{escape(describe(spec))}"></canvas></div>'
    )
