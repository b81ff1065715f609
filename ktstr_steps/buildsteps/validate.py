"""Validate: the critical CONFIG_ options ktstr needs survived into the final .config."""

from __future__ import annotations

from typing import Any

from buildbot.process.results import FAILURE, SUCCESS

from ktstr_steps.buildsteps.base import StateFileStep


def _options(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [m if isinstance(m, dict) else {"option": str(m)} for m in data.get("missing") or []]


class Validate(StateFileStep):
    """``ktstr-ci phase validate``; a missing option fails the build, as in ktstr."""

    name = "validate"
    description = ["validating config"]
    subcommand = ("phase", "validate")
    phase = "validate"

    def _missing_summary(self, missing: list[dict[str, Any]]) -> str:
        return "missing " + ", ".join(str(m.get("option")) for m in missing)

    async def _log_missing(self, missing: list[dict[str, Any]]) -> None:
        lines = [f"{m.get('option')}: {m.get('hint') or ''}".rstrip(": ") for m in missing]
        await self.addCompleteLog("missing-options", "\n".join(lines) + "\n")

    async def interpret(self, data: dict[str, Any]) -> int:  # type: ignore[override]
        missing = _options(data)
        self.set_prop("config_missing", [m.get("option") for m in missing])
        if missing:
            # Defensive: the command exits non-zero here, but an answer listing
            # missing options is a failure whatever the exit status says.
            await self._log_missing(missing)
            self.descriptionDone = self._missing_summary(missing)
            return FAILURE
        self.descriptionDone = "config valid"
        return SUCCESS

    def interpret_failure(self, data: dict[str, Any]) -> str:
        missing = _options(data)
        if missing:
            self.set_prop("config_missing", [m.get("option") for m in missing])
            return self._missing_summary(missing)
        return super().interpret_failure(data)
