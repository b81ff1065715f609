"""CompileCommands: compile_commands.json in the tree, as ktstr generates it for local sources."""

from __future__ import annotations

from typing import Any

from buildbot.process.results import SUCCESS

from ktstr_steps.buildsteps.base import StateFileStep, plural


class CompileCommands(StateFileStep):
    """``ktstr-ci phase compile-commands``; a failure aborts the build, as in ktstr."""

    name = "compile-commands"
    description = ["generating compile_commands.json"]
    subcommand = ("phase", "compile-commands")
    phase = "compile_commands"
    sigtermTime = 30

    def interpret(self, data: dict[str, Any]) -> int:
        self.set_prop("compile_commands", data.get("path"))
        entries = data.get("entries")
        self.descriptionDone = (
            f"compile_commands.json: {plural(int(entries), 'entry', 'entries')}"
            if entries is not None
            else "compile_commands.json generated"
        )
        return SUCCESS
