"""Running kbuild's make: config/mrproper runner, the streamed build, image lookup,
compile_commands.json.

Every make call of one build gets the same variables (:func:`make_vars`): kbuild
records each object's command line and rebuilds objects whose flags changed, so
a ``make compile_commands.json`` without the build's ``KCFLAGS`` (what ktstr
does) recompiles the whole kernel. ``ARCH`` is passed explicitly because on an
x86_64 host ``make tinyconfig`` otherwise yields a 32-bit config.

make runs in its own session so the whole tree of make and its compilers can
be killed as one process group on timeout, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ktstr_steps.errors import KtstrError
from ktstr_steps.messages import Progress, human_line, relay

# ktstr's limit for the inherit-stdio runner (mrproper, defconfig, olddefconfig).
DEFAULT_TIMEOUT = 1800.0
# Seconds between SIGTERM and SIGKILL of make's process group: make uses the
# time to delete half-written targets, so a retry does not link a truncated .o.
KILL_GRACE = 3.0

_KBUILD_ARCH = {"x86_64": "x86_64", "aarch64": "arm64"}
_IMAGES = {"x86_64": "arch/x86/boot/bzImage", "aarch64": "arch/arm64/boot/Image"}


def available_parallelism() -> int:
    """CPUs this process may run on (``make -j`` when no reservation gives one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def make_vars(arch: str) -> list[str]:
    """The make variables of every make call of one build (config, build, compile_commands)."""
    try:
        kbuild_arch = _KBUILD_ARCH[arch]
    except KeyError:
        raise KtstrError(
            f"unsupported architecture {arch!r}: ktstr-ci builds x86_64 and aarch64 kernels natively",
            kind="bad-arch",
        ) from None
    return [f"ARCH={kbuild_arch}", "KCFLAGS=-Wno-error"]


# --- diagnostics -----------------------------------------------------------

# Shapes of real tool output (gcc/clang, GNU as, ld/collect2, modpost, objtool).
# make's own "Makefile:12: warning: overriding recipe" is not a compiler warning.
_WARNING_RES = [
    re.compile(r"^(?!\S*Makefile)\S+?:\d+:(?:\d+:)? warning: "),  # gcc/clang: file:l:c: warning:
    re.compile(r"^\S+?:\d+: Warning: "),  # GNU as: file.S:12: Warning:
    re.compile(r"^\{standard input\}:\d+: Warning: "),  # GNU as on piped input
    re.compile(r"^(?:cc1|cc1plus|gcc|clang|\S*-?gcc|\S*-?ld(?:\.\w+)?|ld(?:\.\w+)?): warning: "),
    re.compile(r"^\S+\.o: warning: objtool: "),  # objtool
    re.compile(r"^WARNING: modpost: "),  # modpost
]
_ERROR_RES = [
    re.compile(r"^(?!\S*Makefile)\S+?:\d+:(?:\d+:)? (?:fatal )?error: "),
    re.compile(r"^\S+?:\d+: Error: "),
    re.compile(r"^\{standard input\}:\d+: Error: "),
    re.compile(r"^(?:cc1|cc1plus|gcc|clang|collect2|\S*-?gcc|\S*-?ld(?:\.\w+)?|ld(?:\.\w+)?): (?:fatal )?error: "),
    re.compile(r"^\S+:\(\S+\): undefined reference to "),  # ld: main.c:(.text+0x5): undefined ...
    re.compile(r"^\S+\.o: error: objtool: "),
    re.compile(r"^ERROR: modpost: "),
]
# make[2]: *** [scripts/Makefile.build:229: kernel/sched/ext.o] Error 1
_FAILED_RE = re.compile(
    r"^\S*make(?:\[\d+\])?: \*\*\* \[(?:[^\]]*?:\d+: )?(?P<target>[^\]]+)\] "
    r"(?:Error \d+|Killed|Terminated|Interrupt|Segmentation fault)"
)
_NO_RULE_RE = re.compile(r"^\S*make(?:\[\d+\])?: \*\*\* No rule to make target '(?P<target>[^']+)'")
# kbuild quiet lines: "  CC      kernel/sched/core.o"
_KBUILD_STEP_RE = re.compile(r"^  (CC|AS|CC \[M\]|LD|AR|HOSTCC|OBJCOPY|BTF|GEN|LDS)\s+(\S+)")


def classify_line(line: str) -> str | None:
    """``"warning"``, ``"error"`` or None for one make output line."""
    for rx in _ERROR_RES:
        if rx.match(line):
            return "error"
    for rx in _WARNING_RES:
        if rx.match(line):
            return "warning"
    return None


def failed_target(line: str) -> str | None:
    """The target named by a make failure line, or None."""
    m = _FAILED_RE.match(line) or _NO_RULE_RE.match(line)
    return m.group("target") if m else None


# --- process handling ------------------------------------------------------


class _Terminated(BaseException):
    """Raised from our SIGTERM handler so the make group is killed before we go."""


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=KILL_GRACE)
    except subprocess.TimeoutExpired:
        pass
    # SIGKILL the group even when make itself is gone: a compiler or a sleep
    # in it may still be alive and holding the tree.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


class _SigtermGuard:
    """Turn SIGTERM into an exception while make runs (main thread only)."""

    def __enter__(self) -> _SigtermGuard:
        self.prev = None
        if threading.current_thread() is threading.main_thread():
            prev = signal.getsignal(signal.SIGTERM)
            if prev is not signal.SIG_IGN:
                self.prev = prev

                def handler(signum, frame):
                    raise _Terminated()

                signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc) -> None:
        if self.prev is not None:
            signal.signal(signal.SIGTERM, self.prev)

    def after_kill(self) -> None:
        """Deliver the SIGTERM to whoever handled it before us, or exit like SIG_DFL would."""
        prev = self.prev
        self.__exit__()
        self.prev = None
        if callable(prev):
            prev(signal.SIGTERM, None)
        # SystemExit rather than dying on the signal so callers' finally blocks
        # (lock and sandbox release) still run.
        raise SystemExit(128 + signal.SIGTERM)


# A parent make's variables (`make run`, `make test`, a user's own Makefile)
# would leak a jobserver we do not own (-j comes from the reservation), -w
# "Entering directory" noise, and the parent's variable overrides into kbuild.
_PARENT_MAKE_VARS = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES", "GNUMAKEFLAGS")


def make_env() -> dict[str, str]:
    """The environment of every make a build runs: ours, minus any parent make's."""
    return {k: v for k, v in os.environ.items() if k not in _PARENT_MAKE_VARS}


def _spawn(argv: list[str], cwd: Path) -> subprocess.Popen:
    try:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=make_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as e:
        raise KtstrError(
            f"spawn {' '.join(argv)}: {e}; is make installed and on PATH?", kind="make-failed"
        ) from e


def _split_lines(buf: bytearray) -> list[str]:
    """Take complete lines out of ``buf``: trailing \\n and a preceding \\r stripped,
    invalid UTF-8 replaced, interior \\r kept, as ktstr splits make's output."""
    out = []
    while True:
        i = buf.find(b"\n")
        if i < 0:
            return out
        raw = bytes(buf[:i])
        del buf[: i + 1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        out.append(raw.decode("utf-8", errors="replace"))


def _pump(
    proc: subprocess.Popen,
    on_line: Callable[[str], None],
    deadline: float | None,
) -> bool:
    """Feed every output line to ``on_line`` until EOF; False when the deadline passed."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if deadline is not None and wait == 0.0:
                return False
            if not sel.select(timeout=min(wait, 0.5) if wait is not None else None):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                if buf:
                    buf.extend(b"\n")
                    for line in _split_lines(buf):
                        on_line(line)
                return True
            buf.extend(chunk)
            for line in _split_lines(buf):
                on_line(line)


def _emit(line: str) -> None:
    # Only make's warnings and errors are problems; a CC line is ordinary output.
    human_line(line, problem=classify_line(line) is not None or failed_target(line) is not None)


def _run_guarded(
    proc: subprocess.Popen, on_line: Callable[[str], None], deadline: float | None
) -> tuple[bool, int]:
    """Pump ``proc``'s output to ``on_line`` until it exits or ``deadline`` passes:
    (finished in time, exit status). Its process group is killed on the deadline,
    Ctrl-C and SIGTERM (which then exits like the signal would)."""
    with _SigtermGuard() as guard:
        try:
            finished = _pump(proc, on_line, deadline)
        except KeyboardInterrupt:
            _kill_group(proc)
            raise
        except _Terminated:
            _kill_group(proc)
            guard.after_kill()
        if not finished:
            _kill_group(proc)
        return finished, proc.wait()


def run_make(
    src: Path,
    targets: Sequence[str],
    *,
    make_vars: Sequence[str],
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """``make <targets> <make_vars>`` in ``src`` (mrproper, defconfig, olddefconfig...).

    Output goes to stderr. Errors: ``make <args> failed`` /
    ``make <args> timed out after Ns; child killed``; the process group is
    killed on timeout, Ctrl-C and SIGTERM.
    """
    args = [*targets, *make_vars]
    shown = " ".join(args)
    proc = _spawn(["make", *args], Path(src))
    finished, rc = _run_guarded(proc, _emit, time.monotonic() + timeout)
    if not finished:
        raise KtstrError(
            f"make {shown} timed out after {timeout:g}s; child killed", kind="make-timeout"
        )
    if rc != 0:
        raise KtstrError(f"make {shown} failed (exit status {rc}) in {src}", kind="make-failed")


@dataclass
class MakeResult:
    returncode: int
    warnings: int
    errors: int
    failed_target: str | None
    lines: int
    log_path: Path | None
    seconds: float
    first_errors: list[str]
    steps: int = 0


class MakeFailed(KtstrError):
    """The streamed build failed; ``result`` keeps the counts and the log path."""

    def __init__(self, message: str, result: MakeResult) -> None:
        super().__init__(message, kind="make-failed")
        self.result = result


def run_make_streamed(
    src: Path,
    *,
    jobs: int,
    make_vars: Sequence[str],
    targets: Sequence[str] = (),
    on_line: Callable[[str], None] | None = None,
    log_path: Path | None = None,
    timeout: float | None = None,
    progress: Progress | None = None,
    estimate: Callable[[int, float], str] | None = None,
) -> MakeResult:
    """``make -jN <make_vars> <targets>`` with stdout+stderr merged and streamed live.

    Every line goes to stderr as it arrives, to ``on_line`` and to the log file
    (``log_path``, else a ``ktstr-ci-make-*.log`` in the temp dir that is
    removed after a success and kept after a failure). Warnings and errors of
    compiler, assembler, linker, modpost and objtool are counted; on failure a
    :class:`MakeFailed` names the failed target and the log. Progress counts
    kbuild's step lines; ``estimate(steps, elapsed seconds)``, when given,
    says how far that is.
    """
    if jobs < 1:
        raise KtstrError(f"make -j needs at least 1 job (got {jobs})", kind="bad-jobs")
    args = [f"-j{jobs}", *make_vars, *targets]
    shown = " ".join(args)
    own_log = log_path is None
    if own_log:
        fd, name = tempfile.mkstemp(prefix="ktstr-ci-make-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    else:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
    progress = progress or Progress("make")
    counts = {"warning": 0, "error": 0, "lines": 0, "steps": 0}
    first_errors: list[str] = []
    failed: list[str] = []
    start = time.monotonic()

    with open(log_path, "w", encoding="utf-8", errors="replace") as log:

        def handle(line: str) -> None:
            counts["lines"] += 1
            _emit(line)
            log.write(line + "\n")
            kind = classify_line(line)
            if kind:
                counts[kind] += 1
                if kind == "error" and len(first_errors) < 5:
                    first_errors.append(line)
            if not failed:
                t = failed_target(line)
                if t:
                    failed.append(t)
            step = _KBUILD_STEP_RE.match(line)
            if step:
                counts["steps"] += 1
                if estimate is not None:
                    progress.update(estimate(counts["steps"], time.monotonic() - start))
                else:
                    progress.update(f"{counts['steps']} build steps, last "
                                    f"{step.group(1).strip()} {step.group(2)}")
            if on_line is not None:
                on_line(line)

        proc = _spawn(["make", *args], Path(src))
        deadline = None if timeout is None else time.monotonic() + timeout
        finished, rc = _run_guarded(proc, handle, deadline)

    result = MakeResult(
        returncode=rc,
        warnings=counts["warning"],
        errors=counts["error"],
        failed_target=failed[0] if failed else None,
        lines=counts["lines"],
        log_path=log_path,
        seconds=time.monotonic() - start,
        first_errors=first_errors,
        steps=counts["steps"],
    )
    if not finished:
        raise MakeFailed(
            f"make {shown} timed out after {timeout:g}s; child killed; full log: {log_path}",
            result,
        )
    if rc != 0:
        target = result.failed_target or "(not reported by make)"
        msg = f"make {shown} failed (exit status {rc}); failed target: {target}"
        if first_errors:
            msg += "; first errors:\n  " + "\n  ".join(first_errors) + "\n"
        else:
            msg += "; "
        msg += f"full log: {log_path}"
        raise MakeFailed(msg, result)
    progress.done(
        f"make: {counts['steps']} build steps, {result.warnings} "
        f"warning{'' if result.warnings == 1 else 's'}, "
        f"{result.seconds:.1f}s"
    )
    if own_log:
        log_path.unlink(missing_ok=True)
        result.log_path = None
    return result


# --- artefacts -------------------------------------------------------------


def find_image(src: Path, arch: str) -> Path:
    """The built kernel image: the arch's boot image, else ``bzImage``/``Image`` at the top."""
    src = Path(src)
    candidates = []
    if arch in _IMAGES:
        candidates.append(src / _IMAGES[arch])
    candidates += [src / "bzImage", src / "Image"]
    for c in candidates:
        if c.is_file():
            return c
    raise KtstrError(f"no kernel image found in {src}", kind="no-image")


def vmlinux_message(src: Path) -> str:
    """ktstr's vmlinux line, to print with ``messages.say`` (the absent case carries ``warning:``)."""
    vmlinux = Path(src) / "vmlinux"
    try:
        size = vmlinux.stat().st_size
    except OSError:
        return "warning: vmlinux not found, BTF will not be cached"
    return f"caching vmlinux ({size / (1024 * 1024):.0f} MB, will be stripped)"


def generate_compile_commands(
    src: Path, make_vars: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT
) -> Path:
    """Write ``<src>/compile_commands.json`` without rebuilding anything.

    Preferred: the tree's own ``scripts/clang-tools/gen_compile_commands.py``
    reading the ``.cmd`` files the build just wrote (about a second on a real
    tree). Fallback, for trees without the script: ``make compile_commands.json``
    with the build's own variables, so kbuild sees unchanged command lines.
    """
    src = Path(src)
    out = src / "compile_commands.json"
    script = src / "scripts/clang-tools/gen_compile_commands.py"
    if script.is_file():
        python = shutil.which("python3") or sys.executable
        argv = [python, str(script), "-d", str(src), "-o", str(out)]
        try:
            r = subprocess.run(
                argv, cwd=src, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=timeout,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            human_line(f"{script}: {e}; falling back to make compile_commands.json")
        else:
            if r.stdout or r.stderr:
                relay(r.stdout + r.stderr)
            if r.returncode == 0 and out.is_file():
                return out
            human_line(
                f"{script} exited with status {r.returncode}; "
                "falling back to make compile_commands.json"
            )
    try:
        run_make(src, ["compile_commands.json"], make_vars=make_vars, timeout=timeout)
    except KtstrError as e:
        raise KtstrError(
            f"make compile_commands.json failed: {e}", kind="compile-commands"
        ) from e
    if not out.is_file():
        raise KtstrError(
            f"make compile_commands.json failed: it succeeded but wrote no {out}",
            kind="compile-commands",
        )
    return out
