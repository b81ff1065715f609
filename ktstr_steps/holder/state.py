"""Where holders live and what they leave on disk: names, state files, liveness, the stale sweep.

A holder named NAME keeps ``<run>/holders/NAME.json`` (its state, written
atomically), ``NAME.log`` (its diagnostics) and a unix socket named by the
CRC32 of NAME. ``<run>`` is ``$KTSTR_CI_RUN_DIR``, else ``/run/ktstr-ci``,
else ``/tmp/ktstr-ci-run`` when ``/run`` is not writable.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from ktstr_steps.buildprocs import describe, kill_build, marker
from ktstr_steps.errors import KtstrError
from ktstr_steps.keys import crc32_hex
from ktstr_steps.liveness import pid_alive
from ktstr_steps.messages import say, warn

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def run_dir() -> Path:
    env = os.environ.get("KTSTR_CI_RUN_DIR")
    if env:
        return Path(env)
    if os.access("/run", os.W_OK):
        return Path("/run/ktstr-ci")
    return Path("/tmp/ktstr-ci-run")


def holders_dir(create: bool = False) -> Path:
    d = run_dir() / "holders"
    if create:
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError as exc:
            raise KtstrError(
                f"cannot create holder directory {d}: {exc.strerror}. Set KTSTR_CI_RUN_DIR to a "
                "writable local directory.",
                kind="holder-error",
            ) from exc
    return d


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise KtstrError(
            f"invalid holder name {name!r}: use 1-100 characters from A-Z a-z 0-9 _ . -",
            kind="invalid-holder-name",
        )
    return name


def state_path(name: str) -> Path:
    return holders_dir() / f"{check_name(name)}.json"


def log_path(name: str) -> Path:
    return holders_dir() / f"{check_name(name)}.log"


def sock_name(name: str) -> str:
    # A hash, not the name: sun_path is 108 bytes and names may be 100 chars.
    return f"{crc32_hex(name.encode())}.sock"


@contextlib.contextmanager
def sock_addr(name: str) -> Iterator[str]:
    """A short address for the socket under a possibly long run dir (via /proc/self/fd)."""
    fd = os.open(holders_dir(), os.O_PATH | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{sock_name(name)}"
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)  # readers never see a half-written state


def read_state(name: str) -> dict | None:
    try:
        return json.loads(state_path(name).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise KtstrError(f"holder state {state_path(name)} is unreadable: {exc}", kind="holder-error") from exc


def is_alive(state: dict) -> bool:
    return pid_alive(state.get("pid"), state.get("pid_create_time"))


def public(state: dict) -> dict:
    out = dict(state)
    out["alive"] = is_alive(state)
    return out


def lost_message(state: dict) -> str:
    """What a build is told when its holder is gone: its reservation no longer exists."""
    return f"reservation lost: holder pid {state.get('pid')} died"


def forget(name: str) -> None:
    for p in (state_path(name), holders_dir() / sock_name(name)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def end_dead_holder(state: dict) -> list[str]:
    """What a dead holder left: kill its build's processes, remove its cgroup.

    Its flocks died with it (unless a phase command still keeps copies: that
    command's own guard releases them once the build's processes are dead).
    Returns what was cleaned, as the ``released`` words of ``holder release``.
    """
    from ktstr_steps.cgroups import remove_stale_sandbox

    name, pid = state.get("name", "?"), state.get("pid")
    tag = marker(name, pid) if pid else None
    sb = state.get("sandbox") or {}
    path = Path(sb["path"]) if sb.get("path") else None
    killed, survivors = kill_build(path if path is not None and path.exists() else None, tag)
    if killed:
        say(f"holder {name} (pid {pid}) was gone; killed the processes of its build: "
            f"{describe(killed)}")
    if survivors:
        warn(f"holder {name}: processes {survivors} of its build survive SIGKILL")
    out = []
    if path is not None and path.exists() and remove_stale_sandbox(path, sb.get("kind", "v1"), tag=tag):
        out.append("sandbox")
    return out


def sweep_stale() -> list[str]:
    """Forget holders whose process is gone, after ending their builds' processes."""
    swept: list[str] = []
    d = holders_dir()
    if not d.is_dir():
        return swept
    for f in sorted(d.glob("*.json")):
        name = f.stem
        if not NAME_RE.fullmatch(name):
            continue
        try:
            st = json.loads(f.read_text())
        except (OSError, ValueError):
            continue  # being written right now (atomic rename) or foreign: leave it
        if is_alive(st):
            continue
        end_dead_holder(st)
        forget(name)
        swept.append(name)
    return swept
