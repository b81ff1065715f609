"""Make: the kernel build itself, streamed live, progress in the status line, warnings counted."""

from __future__ import annotations

from typing import Any

from buildbot.process.results import SUCCESS, WARNINGS

from ktstr_steps.buildsteps.base import (
    SandboxedStep,
    first_error,
    plural,
)


class KernelMake(SandboxedStep):
    """``ktstr-ci phase make`` inside the holder's sandbox, ``-j`` from the holder's plan."""

    name = "make"
    description = ["building"]
    subcommand = ("phase", "make")
    phase = "make"
    warnOnWarnings = True
    # On stop the worker sends TERM to the process group first and KILL only after
    # this many seconds: time for ktstr-ci to kill make's own process group
    # (jobserver children included) and note the stop in the state file.
    sigtermTime = 30

    def getCurrentSummary(self) -> dict[str, str]:
        # "make 412/1,530 (27 %), about 2 min left": the progress text says it all.
        if self.progress_text:
            return {"step": f"make {self.progress_text}"}
        return super().getCurrentSummary()

    def _counts(self, data: dict[str, Any]) -> tuple[int, int]:
        warnings = int(data.get("warnings") or 0)
        errors = int(data.get("errors") or 0) if not isinstance(data.get("errors"), list) else 0
        self.set_prop("make_warnings", warnings)
        self.set_prop("make_errors", errors)
        self.set_prop("make_jobs", data.get("jobs"))
        if data.get("seconds") is not None:
            self.add_phase_seconds("make", data["seconds"])
        return warnings, errors

    def on_failure(self, data: dict[str, Any]) -> None:
        self._counts(data)

    def interpret_failure(self, data: dict[str, Any]) -> str:
        target = data.get("failed_target")
        if target:
            return f"make failed: {target}"
        return f"make failed: {first_error(data) or self.tail() or 'no target reported'}"

    def interpret(self, data: dict[str, Any]) -> int:
        warnings, _ = self._counts(data)
        jobs = data.get("jobs")
        done = f"built (-j{jobs})" if jobs else "built"
        if warnings:
            done += f"; {plural(warnings, 'warning')}"
        self.descriptionDone = done
        return WARNINGS if warnings else SUCCESS
