"""CompileCommands: compile_commands.json in the tree, as ktstr generates it for local sources."""

from __future__ import annotations

from typing import Any

from buildbot.interfaces import IRenderable
from buildbot.process.results import SUCCESS

from ktstr_steps.buildsteps.base import KtstrCiStep, check_renderable_or, plural, state_path


class CompileCommands(KtstrCiStep):
    """``ktstr-ci phase compile-commands``; a failure aborts the build, as in ktstr."""

    name = "compile-commands"
    description = ["generating compile_commands.json"]
    subcommand = ("phase", "compile-commands")
    phase = "compile_commands"
    renderables = ["state"]
    sigtermTime = 30

    def __init__(self, *, state: str | IRenderable = state_path, **kwargs: Any) -> None:
        check_renderable_or(state, str, type(self), "state")
        self.state = state
        super().__init__(**kwargs)

    def arguments(self) -> list[str]:
        return ["--state", self.state]

    def interpret(self, data: dict[str, Any]) -> int:
        self.set_prop("compile_commands", data.get("path"))
        entries = data.get("entries")
        self.descriptionDone = (
            f"compile_commands.json: {plural(int(entries), 'entry', 'entries')}"
            if entries is not None
            else "compile_commands.json generated"
        )
        return SUCCESS
