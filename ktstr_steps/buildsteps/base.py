"""The common base of every ktstr-ci step: run one ``ktstr-ci`` worker command, read its JSON.

The step runs ``ktstr-ci --result-file FILE <subcommand> ... --json``: the
command's human output then comes on stdout (the ``stdio`` log reads like a
terminal), only its warnings and errors on stderr (which Buildbot marks), and
its progress events and JSON answer as JSON lines in FILE, which the worker
sends back as the ``result`` log (a ShellMixin ``logfiles`` entry). Progress
events become the step's status line; the last object is the answer, turned
into properties and a one-line summary. Subclasses only say which argv to run
and what the JSON means.
"""

from __future__ import annotations

import inspect
import json
import posixpath
import re
from collections import deque
from collections.abc import Generator
from typing import Any, ClassVar

from buildbot import config
from buildbot.interfaces import IRenderable
from buildbot.process import buildstep, logobserver
from buildbot.process.properties import renderer
from buildbot.process.results import CANCELLED, FAILURE, SUCCESS

from ktstr_steps.keys import crc32_hex

# Build property holding {phase: seconds} as measured by the steps themselves;
# the record step prefers the pipeline's own timings and fills gaps from this.
PHASE_SECONDS = "phase_seconds"

STATE_FILE = "ktstr-state.json"

# The error kind of a phase whose holder died: the build may not go on, store or publish.
RESERVATION_LOST = "reservation-lost"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
# The log the worker fills from the command's result file.
RESULT_LOG = "result"
_SUMMARY_MAX = 200


def safe_name(text: str, *, always_crc: bool = False, limit: int = 80) -> str:
    """A path/holder-safe rendering of ``text``: ``[A-Za-z0-9._-]`` only.

    Replaced characters could make two names collide ("a/b" and "a_b"), so the
    CRC32 of the real name is appended whenever anything was replaced (or
    always, for directory names, where a bare "." or ".." must never appear).
    """
    safe = _UNSAFE.sub("_", text)[:limit] or "_"
    if always_crc or safe != text:
        return f"{safe}-{crc32_hex(text.encode())}"
    return safe


def branch_dir(branch: str | None) -> str:
    """The per-branch tree directory name below the worker's ``tree_store``."""
    return safe_name(branch or "HEAD", always_crc=True)


@renderer
def holder_name(props: Any) -> str:
    """``ktstr-<builder>-<number>``: unique per build, valid as a holder name."""
    builder = safe_name(str(props.getProperty("buildername") or "builder"))
    return f"ktstr-{builder}-{props.getProperty('buildnumber', 0)}"


@renderer
def tree_path(props: Any) -> str | None:
    """``<tree_store>/<builder>/<branch dir>``, or None when the worker has no ``tree_store``.

    Per builder, not only per branch: builders differ by config profile, and a
    tree's ``.config`` is an input of its next build — a tiny build must never
    inherit the defconfig tree's ``.config`` (or the other way round).
    """
    store = props.getProperty("tree_store")
    if not store:
        return None
    builder = safe_name(str(props.getProperty("buildername") or "builder"))
    return posixpath.join(str(store), builder, branch_dir(props.getProperty("branch")))


# Relative to the step's workdir, which for every phase step is the builder's
# own workdir on the worker: never the shared per-branch tree.
state_path = STATE_FILE


def result_file_name(subcommand: tuple[str, ...]) -> str:
    """The result file of one subcommand, in the builder's workdir.

    One file per subcommand, so two steps of one build never share one: the
    worker sends a watched file only once its (ctime, mtime, size) differ from
    what was there before the command started.
    """
    return "ktstr-result-" + "-".join(subcommand) + ".json"


def parse_json_object(stdout: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """The last JSON object on stdout: ``(object, None)`` or ``(None, "no JSON" | "malformed JSON")``.

    The command prints exactly one object; tolerating stray lines before it
    costs nothing and keeps a noisy wrapper script from failing the build.
    """
    text = (stdout or "").strip()
    if not text:
        return None, "no JSON"
    starts = [m.start() for m in re.finditer(r"(?m)^\{", text)]
    for start in reversed(starts):
        try:
            value = json.loads(text[start:])
        except ValueError:
            continue
        if isinstance(value, dict):
            return value, None
    return None, "malformed JSON"


def _progress_event(line: str) -> dict[str, Any] | None:
    """The ``{"progress": {...}}`` event of one result-file line, or None."""
    if not line.startswith('{"progress"'):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    event = value.get("progress") if isinstance(value, dict) else None
    return event if isinstance(event, dict) and len(value) == 1 else None


def first_error(data: dict[str, Any]) -> str | None:
    """The first ``errors[].message`` of a JSON answer, one line."""
    for err in data.get("errors") or []:
        msg = err.get("message") if isinstance(err, dict) else str(err)
        if msg:
            return one_line(str(msg))
    return None


def error_of_kind(data: dict[str, Any], kind: str) -> str | None:
    """The message of the first ``errors[]`` entry of ``kind``, one line."""
    errors = data.get("errors")
    for err in errors if isinstance(errors, list) else []:
        if isinstance(err, dict) and err.get("kind") == kind and err.get("message"):
            return one_line(str(err["message"]))
    return None


def one_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= _SUMMARY_MAX else line[: _SUMMARY_MAX - 1] + "…"


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def check_renderable_or(value: Any, types: type | tuple[type, ...], cls: type, name: str) -> None:
    """config.error unless ``value`` is renderable or of ``types``."""
    if IRenderable.providedBy(value) or isinstance(value, types):
        return
    config.error(f"{cls.__name__} argument {name} must be {types} or a renderable, not {value!r}")


class KtstrCiStep(buildstep.ShellMixin, buildstep.BuildStep):
    """Run ``ktstr-ci <subcommand...> ... --json`` on the worker and interpret its JSON.

    Subclasses set ``subcommand`` and ``phase`` and implement ``arguments()``
    (the argv after the subcommand, from rendered attributes) and
    ``interpret()`` (properties, summary and result from a successful answer).
    """

    subcommand: ClassVar[tuple[str, ...]] = ()
    phase: ClassVar[str] = ""
    renderables = ["ktstr_ci"]

    # The worker environment has nothing the build needs and may hold secrets.
    logEnviron = False
    haltOnFailure = True

    def __init__(self, *, ktstr_ci: str | IRenderable = "ktstr-ci", **kwargs: Any) -> None:
        check_renderable_or(ktstr_ci, str, type(self), "ktstr_ci")
        if ktstr_ci == "":
            config.error(f"{type(self).__name__} argument ktstr_ci must not be empty")
        self.ktstr_ci = ktstr_ci
        kwargs["logfiles"] = {**(kwargs.get("logfiles") or {}),
                              RESULT_LOG: result_file_name(self.subcommand)}
        kwargs = self.setupShellMixin(kwargs, prohibitArgs=["command"])
        super().__init__(**kwargs)
        self.progress_text: str | None = None
        # Only a tail: a make log can be 100k lines and the master keeps this in memory.
        self.stderr_tail: deque[str] = deque(maxlen=10)
        self.result_lines: list[str] = []
        self.addLogObserver("stdio", logobserver.LineConsumerLogObserver(self._consume))
        self.addLogObserver(RESULT_LOG, logobserver.LineConsumerLogObserver(self._consume_result))

    # -- what subclasses provide -------------------------------------------------

    @property
    def label(self) -> str:
        return " ".join(["ktstr-ci", *self.subcommand])

    def arguments(self) -> list[str]:
        """The argv after ``ktstr-ci <subcommand>``, without ``--json``."""
        return []

    def check_rendered(self) -> str | None:
        """A reason not to run the command at all (bad rendered input), or None."""
        return None

    def interpret(self, data: dict[str, Any]) -> int:
        """Set properties and ``descriptionDone`` from a successful answer; return the result."""
        return SUCCESS

    def interpret_failure(self, data: dict[str, Any]) -> str:
        """The summary when the command failed and said why in its JSON."""
        why = first_error(data) or self.tail() or "no error message"
        return f"{self.name} failed: {why}"

    # -- helpers for subclasses ---------------------------------------------------

    def set_prop(self, name: str, value: Any) -> None:
        if value is not None:
            self.setProperty(name, value, type(self).__name__)

    def add_phase_seconds(self, phase: str, seconds: float) -> None:
        times = dict(self.getProperty(PHASE_SECONDS) or {})
        times[phase] = round(float(seconds), 3)
        self.setProperty(PHASE_SECONDS, times, type(self).__name__)

    def tail(self) -> str:
        lines = [line for line in self.stderr_tail if line.strip()]
        return one_line(lines[-1]) if lines else ""

    def _consume(self) -> Generator[None, tuple[str, str], None]:
        while True:
            stream, line = yield
            if stream == "e":
                self.stderr_tail.append(line)

    def _consume_result(self) -> Generator[None, tuple[str, str], None]:
        while True:
            _stream, line = yield
            event = _progress_event(line)
            if event is not None:
                self.on_progress(event)
            elif line.strip():
                self.result_lines.append(line)

    def on_progress(self, event: dict[str, Any]) -> None:
        """A progress event of the command: its text becomes the status line."""
        text = str(event.get("text") or "").strip()
        if text:
            self.progress_text = text
            self.updateSummary()

    def getCurrentSummary(self) -> dict[str, str]:
        summary = super().getCurrentSummary()
        if self.progress_text:
            summary = {"step": f"{summary['step']}: {self.progress_text}"}
        return summary

    # -- the run --------------------------------------------------------------------

    async def run(self) -> int:
        problem = self.check_rendered()
        if problem:
            self.descriptionDone = problem
            return FAILURE
        started = self.master.reactor.seconds()
        cmd = await self.makeRemoteShellCommand(command=self.command_argv())
        await self.runCommand(cmd)
        if self.phase:
            self.add_phase_seconds(self.phase, self.master.reactor.seconds() - started)
        if self.stopped or cmd.results() == CANCELLED:
            # A stop: CANCELLED is the only result Buildbot accepts after interrupt().
            self.descriptionDone = f"{self.name} interrupted"
            return CANCELLED
        data, problem = await self.read_answer()
        if data is None:
            tail = self.tail()
            self.descriptionDone = f"{self.label} printed {problem}" + (f": {tail}" if tail else "")
            return FAILURE
        if cmd.results() != SUCCESS or data.get("ok") is False:
            self.on_failure(data)
            lost = error_of_kind(data, RESERVATION_LOST)
            # A lost reservation is the build's cause of failure, whichever phase saw it.
            self.descriptionDone = lost or self.interpret_failure(data)
            return FAILURE
        result = self.interpret(data)
        # interpret() may be async when it adds logs.
        return (await result) if inspect.isawaitable(result) else result

    def command_argv(self) -> list[str]:
        return [self.ktstr_ci, "--result-file", result_file_name(self.subcommand),
                *self.subcommand, *self.arguments(), "--json"]

    async def read_answer(self) -> tuple[dict[str, Any] | None, str | None]:
        """The command's JSON answer from the result log, as :func:`parse_json_object`."""
        # A last line without a newline reaches the observers only on a flush.
        await self.getLog("stdio").flush()
        await self.getLog(RESULT_LOG).flush()
        return parse_json_object("\n".join(self.result_lines))

    def on_failure(self, data: dict[str, Any]) -> None:
        """Properties worth keeping from a failed answer (make's counts, for example)."""

    def getResultSummary(self) -> dict[str, str]:
        # ShellMixin would print the whole command line when descriptionDone is unset;
        # BuildStep's own summary falls back to the description instead.
        return buildstep.BuildStep.getResultSummary(self)


class StateFileStep(KtstrCiStep):
    """A phase whose one worker-side option is the build's state file (``--state``)."""

    renderables = ["state"]

    def __init__(self, *, state: str | IRenderable = state_path, **kwargs: Any) -> None:
        check_renderable_or(state, str, type(self), "state")
        self.state = state
        super().__init__(**kwargs)

    def arguments(self) -> list[str]:
        return ["--state", self.state]


class SandboxedStep(StateFileStep):
    """A phase that runs inside the build's holder (its sandbox and locks): ``--holder`` too."""

    renderables = ["state", "holder"]

    def __init__(self, *, holder: str | IRenderable = holder_name, **kwargs: Any) -> None:
        check_renderable_or(holder, str, type(self), "holder")
        self.holder = holder
        super().__init__(**kwargs)

    def arguments(self) -> list[str]:
        return [*super().arguments(), "--holder", self.holder]
