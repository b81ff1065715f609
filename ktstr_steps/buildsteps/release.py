"""Release: give back what the holder holds (source lock, sandbox, LLC locks; that order)."""

from __future__ import annotations

from typing import Any

from buildbot.interfaces import IRenderable
from buildbot.process.results import SUCCESS

from ktstr_steps.buildsteps.base import KtstrCiStep, check_renderable_or, holder_name


class Release(KtstrCiStep):
    """``ktstr-ci holder release``; alwaysRun, so a stopped or failed build releases too.

    The command guarantees the order (sandbox torn down before the LLC flocks
    go), so the step only has to make sure it is always called.
    """

    name = "release"
    description = ["releasing"]
    subcommand = ("holder", "release")
    phase = ""
    renderables = ["holder"]
    alwaysRun = True
    # A release that fails leaves CPUs held: the build must say so, but nothing after it halts.
    haltOnFailure = False
    sigtermTime = 10

    def __init__(self, *, holder: str | IRenderable = holder_name, **kwargs: Any) -> None:
        check_renderable_or(holder, str, type(self), "holder")
        self.holder = holder
        super().__init__(**kwargs)

    def arguments(self) -> list[str]:
        return ["--name", self.holder]

    def interpret(self, data: dict[str, Any]) -> int:
        released = [str(r) for r in data.get("released") or []]
        self.set_prop("released", released)
        self.descriptionDone = f"released {', '.join(released)}" if released else "nothing held"
        return SUCCESS
