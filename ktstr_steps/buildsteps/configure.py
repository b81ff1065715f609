"""Configure: base config + baked ktstr.kconfig + profile; override/dropped warnings shown."""

from __future__ import annotations

from typing import Any

from buildbot.interfaces import IRenderable
from buildbot.process.results import SUCCESS, WARNINGS

from ktstr_steps.buildsteps.base import (
    SandboxedStep,
    check_renderable_or,
    plural,
)


def kconfig_warning_lines(data: dict[str, Any]) -> list[str]:
    """The override and dropped-option warnings as readable lines, for their own log."""
    lines = [
        f"override: {o.get('symbol')} was {o.get('was')}, now {o.get('now')}"
        for o in data.get("overrides") or []
    ]
    lines += [
        f"dropped: {d.get('line')} (final state: {d.get('final_state')})"
        for d in data.get("dropped") or []
    ]
    return lines


class Configure(SandboxedStep):
    """``ktstr-ci phase configure``; dropped options make the step (and build) WARNINGS."""

    name = "configure"
    description = ["configuring"]
    subcommand = ("phase", "configure")
    phase = "configure"
    renderables = ["state", "holder", "clean"]
    warnOnWarnings = True
    # make defconfig / olddefconfig / mrproper are killed with their process group on stop.
    sigtermTime = 30

    def __init__(self, *, clean: bool | IRenderable = False, **kwargs: Any) -> None:
        check_renderable_or(clean, bool, type(self), "clean")
        self.clean = clean
        super().__init__(**kwargs)

    def arguments(self) -> list[str]:
        return super().arguments() + (["--clean"] if self.clean else [])

    async def interpret(self, data: dict[str, Any]) -> int:  # type: ignore[override]
        overrides = len(data.get("overrides") or [])
        dropped = len(data.get("dropped") or [])
        self.set_prop("config_overrides", overrides)
        self.set_prop("config_dropped", dropped)
        lines = kconfig_warning_lines(data)
        if lines:
            await self.addCompleteLog("kconfig-warnings", "\n".join(lines) + "\n")
        if data.get("skipped"):
            done = f"{data['skipped']}, skipped"
        else:
            done = "configured" if data.get("configured", True) else "config up to date"
        if overrides or dropped:
            done += f"; {plural(overrides, 'override')}, {dropped} dropped"
        self.descriptionDone = done
        return WARNINGS if dropped else SUCCESS
