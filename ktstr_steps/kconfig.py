"""Kernel config: the baked fragment, --extra-kconfig, profiles, configure,
override/dropped warnings and post-build validation.

Fixes over ktstr: the "already configured?" probe looks only
at semantic lines (assignments and ``is not set`` directives), takes the last
line per symbol (kbuild's last-assignment-wins, so baked + user lines on the
same symbol do not make the probe unsatisfiable) and treats ``CONFIG_X=n`` as
``# CONFIG_X is not set``. The dropped-line check uses the same rules.
"""

from __future__ import annotations

import os
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ktstr_steps.errors import KtstrError
from ktstr_steps.kbuild import run_make
from ktstr_steps.keys import crc32_hex
from ktstr_steps.messages import Progress, warn
from ktstr_steps.paths import KTSTR_KCONFIG_ENV, kconfig_dir, ktstr_kconfig_path

BASE_CONFIGS = ("defconfig", "tinyconfig", "allnoconfig")

_ASSIGN_RE = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
_NOTSET_RE = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set$")
# Values kbuild writes: y/m/n, decimal, hex, or a double-quoted string.
_VALUE_RE = re.compile(r'^(?:[ymn]|-?[0-9]+|0[xX][0-9a-fA-F]+|"(?:[^"\\]|\\.)*")$')

_VALID_LINE_HELP = (
    "a valid line is CONFIG_NAME=value (value y, m, n, a number, 0x hex or a "
    '"quoted string"), "# CONFIG_NAME is not set", a "#" comment, or blank'
)

ABSENT = "(absent — symbol not present in .config; likely disabled or unrecognized by kconfig)"


# --- the baked fragment ----------------------------------------------------


def baked_fragment() -> str:
    """The ktstr.kconfig fragment, merged after the base config, before the user's fragment:
    ``$KTSTR_CI_KTSTR_KCONFIG`` (the user's ktstr's file) or kconfig/ktstr.kconfig."""
    path = ktstr_kconfig_path()
    try:
        data = path.read_bytes()
    except OSError as e:
        if os.environ.get(KTSTR_KCONFIG_ENV):
            fix = (f"point {KTSTR_KCONFIG_ENV} ([kconfig] ktstr_fragment) at the ktstr.kconfig "
                   "your ktstr uses, or unset it for ktstr-ci's own")
        else:
            fix = ("ktstr-ci's install is incomplete (set KTSTR_CI_KCONFIG_DIR to the kconfig/ "
                   "directory)")
        raise KtstrError(f"read {path}: {e.strerror or e}; {fix}", kind="bad-kconfig") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise KtstrError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); "
                         "a ktstr.kconfig fragment is text", kind="bad-kconfig") from None


def kconfig_hash() -> str:
    """CRC32 of the baked fragment's bytes: the ``kc<hash>`` of every cache key."""
    return crc32_hex(baked_fragment().encode("utf-8"))


def extra_kconfig_hash(text: str | None) -> str | None:
    """CRC32 of the user's fragment bytes, or None without one."""
    return None if text is None else crc32_hex(text.encode("utf-8"))


def merge_fragments(baked: str, extra: str | None) -> str:
    """baked + "\\n" + extra (the user's lines last, so they win in kbuild)."""
    return baked if extra is None else baked + "\n" + extra


# --- parsing ---------------------------------------------------------------


def line_symbol(line: str) -> str | None:
    """``CONFIG_X`` for ``CONFIG_X=...`` or ``# CONFIG_X is not set`` (trimmed line), else None."""
    m = _ASSIGN_RE.match(line) or _NOTSET_RE.match(line)
    return f"CONFIG_{m.group(1)}" if m else None


def _is_semantic(line: str) -> bool:
    return bool(_ASSIGN_RE.match(line) or _NOTSET_RE.match(line))


def parse_fragment(text: str, origin: str) -> list[str]:
    """Validate a fragment; returns its semantic lines (trimmed), in order.

    Raises KtstrError(kind="bad-kconfig") naming ``origin:line`` for a line
    kbuild would silently ignore or misread.
    """
    out: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        problem = None
        if "\x00" in line:
            problem = "contains a NUL byte"
        elif line.startswith("#"):
            if _NOTSET_RE.match(line):
                out.append(line)
                continue
            if not re.match(r"^#\s*CONFIG_[A-Za-z0-9_]+\s+is\s+not\s+set\s*$", line):
                continue  # a plain comment
            # kbuild only honours the exact spelling; this near miss would be
            # read as a comment and silently do nothing.
            problem = 'spell it exactly "# CONFIG_NAME is not set" (one space each)'
        else:
            m = _ASSIGN_RE.match(line)
            if not m:
                if re.match(r"^[A-Za-z0-9_]+=", line):
                    problem = "the symbol name must start with CONFIG_"
                elif line.startswith("CONFIG_") and "=" not in line:
                    problem = "missing =value"
                else:
                    problem = "not a kconfig line"
            elif not m.group(2):
                problem = "empty value (use # CONFIG_NAME is not set to disable)"
            elif not _VALUE_RE.match(m.group(2)):
                problem = f"invalid value {m.group(2)!r}"
            else:
                out.append(line)
                continue
        raise KtstrError(
            f"{origin}:{n}: malformed kconfig line {raw.strip()!r}: {problem}; {_VALID_LINE_HELP}",
            kind="bad-kconfig",
        )
    return out


def load_extra_kconfig(path: str | Path) -> str:
    """Read and validate an --extra-kconfig file; returns its text unchanged.

    The file must be UTF-8 (its bytes are hashed into the cache key). An empty
    file is allowed with a warning.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise KtstrError(
            f"--extra-kconfig {p}: no such file; pass the path of a kconfig fragment file",
            kind="bad-kconfig",
        ) from None
    except IsADirectoryError:
        raise KtstrError(
            f"--extra-kconfig {p}: is a directory; pass a kconfig fragment file",
            kind="bad-kconfig",
        ) from None
    except PermissionError:
        raise KtstrError(
            f"--extra-kconfig {p}: permission denied; make the file readable by this user",
            kind="bad-kconfig",
        ) from None
    except OSError as e:
        raise KtstrError(f"--extra-kconfig {p}: {e.strerror or e}", kind="bad-kconfig") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise KtstrError(
            f"--extra-kconfig {p}: not UTF-8 (invalid byte 0x{data[e.start]:02x} at offset "
            f"{e.start}); save the fragment as UTF-8",
            kind="bad-kconfig",
        ) from None
    if not text.strip():
        warn(f"--extra-kconfig {p} is empty; only the baked-in ktstr.kconfig applies")
    parse_fragment(text, str(p))
    return text


def semantic_lines(fragment: str) -> list[str]:
    """Trimmed assignment and ``is not set`` lines; comments and blanks do not count."""
    return [line for line in (raw.strip() for raw in fragment.splitlines()) if _is_semantic(line)]


def _normal(line: str) -> str:
    """``CONFIG_X=n`` and ``# CONFIG_X is not set`` mean the same to kbuild."""
    m = _ASSIGN_RE.match(line)
    if m and m.group(2) == "n":
        return f"# CONFIG_{m.group(1)} is not set"
    return line


def _effective(lines: list[str]) -> dict[str, str]:
    """symbol -> its last semantic line (kbuild: last assignment wins)."""
    eff: dict[str, str] = {}
    for line in lines:
        sym = line_symbol(line)
        if sym:
            eff[sym] = line
    return eff


def _config_lines(src: Path) -> set[str] | None:
    try:
        text = (Path(src) / ".config").read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None
    return {line.strip() for line in text.splitlines()}


def has_sched_ext(src: Path) -> bool:
    """ktstr's check: ``.config`` has the exact line ``CONFIG_SCHED_CLASS_EXT=y`` (no trimming)."""
    try:
        data = (Path(src) / ".config").read_bytes()
    except OSError:
        return False
    return b"CONFIG_SCHED_CLASS_EXT=y" in data.split(b"\n")


def fragment_applied(src: Path, fragment: str) -> bool:
    """The fixed probe: every symbol's effective fragment line is in ``.config``."""
    have = _config_lines(src)
    if have is None:
        return False
    have = {_normal(x) for x in have}
    return all(_normal(line) in have for line in _effective(semantic_lines(fragment)).values())


# --- warnings --------------------------------------------------------------


@dataclass(frozen=True)
class Override:
    symbol: str
    was: str
    now: str


@dataclass(frozen=True)
class Dropped:
    line: str
    final_state: str


def _value_of(line: str) -> str:
    m = _ASSIGN_RE.match(line)
    return f"={m.group(2)}" if m else "is not set"


def overrides(baked: str, extra: str) -> list[Override]:
    """User lines that change a baked-in symbol's line (byte-wise), in user order."""
    base = _effective(semantic_lines(baked))
    out = []
    for line in semantic_lines(extra):
        sym = line_symbol(line)
        if sym in base and base[sym] != line:
            out.append(Override(sym, _value_of(base[sym]), _value_of(line)))
    return out


def format_override(o: Override) -> str:
    return f"--extra-kconfig overrides baked-in {o.symbol} (was {o.was}, now {o.now})"


def dropped_lines(src: Path, extra: str) -> list[Dropped]:
    """User lines (the last per symbol) that olddefconfig did not keep; [] if no .config."""
    have = _config_lines(src)
    if have is None:
        return []
    normal = {_normal(x) for x in have}
    by_symbol: dict[str, str] = {}
    for line in have:
        sym = line_symbol(line)
        if sym:
            by_symbol[sym] = line
    out = []
    for sym, line in _effective(semantic_lines(extra)).items():
        if _normal(line) in normal:
            continue
        out.append(Dropped(line, by_symbol.get(sym, ABSENT)))
    return out


def format_dropped(d: Dropped) -> str:
    return (
        "--extra-kconfig line did not survive `make olddefconfig` (likely an unmet "
        f'dependency or unrecognized symbol) requested="{d.line}" final_state="{d.final_state}"'
    )


# --- profiles --------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    name: str
    base: str
    extra_text: str | None
    extra_files: tuple[Path, ...]


def load_profile(name: str) -> Profile:
    """A named profile from kconfig/profiles.toml: its base config and merged extra text."""
    kdir = kconfig_dir()
    path = kdir / "profiles.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise KtstrError(f"read {path}: {e}; fix the profiles file", kind="bad-profile") from e
    profiles = data.get("profiles", {})
    if name not in profiles:
        known = ", ".join(sorted(profiles)) or "(none)"
        raise KtstrError(
            f"unknown config profile {name!r}; known profiles: {known} (defined in {path})",
            kind="bad-profile",
        )
    entry = profiles[name]
    base = entry.get("base", "defconfig")
    if base not in BASE_CONFIGS:
        base_path = (kdir / base).resolve()
        if not base_path.is_file():
            raise KtstrError(
                f"profile {name!r}: base config {base!r} is neither one of "
                f"{', '.join(BASE_CONFIGS)} nor a file under {kdir}",
                kind="bad-profile",
            )
        base = str(base_path)
    files = []
    texts = []
    for rel in entry.get("extra", []):
        f = kdir / "extra" / rel
        texts.append(load_extra_kconfig(f))
        files.append(f)
    extra_text = "\n".join(texts) if texts else None
    return Profile(name, base, extra_text, tuple(files))


# --- configure -------------------------------------------------------------


def check_base_config(base_config: str) -> str:
    """Validate a ``--base-config`` value; returns the name or the absolute file path."""
    if base_config in BASE_CONFIGS:
        return base_config
    p = Path(base_config)
    if p.is_file():
        return str(p.resolve())
    raise KtstrError(
        f"--base-config {base_config!r}: not one of {', '.join(BASE_CONFIGS)} and no such "
        "file; pass a base config target name or the path of a .config file",
        kind="bad-base-config",
    )


def configure_kernel(
    src: Path,
    fragment: str,
    *,
    base_config: str = "defconfig",
    make_vars: list[str],
    force: bool = False,
    from_base: bool = False,
) -> bool:
    """Base config (only when there is no ``.config``, or always with ``from_base``), then
    fragment + ``make olddefconfig`` unless the fragment is already applied (``force``
    skips that probe).

    Returns whether ``.config`` changed; when it did not, its mtime is kept, so
    kbuild does not even resync. On a failure ``.config`` is put back as it
    was, so a broken fragment leaves nothing behind.
    """
    src = Path(src)
    config = src / ".config"
    base = check_base_config(base_config)
    progress = Progress("configure", interval=0.0)
    try:
        before: bytes | None = config.read_bytes()
        before_stat = config.stat()
    except FileNotFoundError:
        before = None
    try:
        if before is None or from_base:
            if base in BASE_CONFIGS:
                progress.update(f"make {base}")
                run_make(src, [base], make_vars=make_vars)
            else:
                progress.update(f"base config from {base}")
                shutil.copyfile(base, config)
        if force or not fragment_applied(src, fragment):
            current = config.read_bytes()
            with open(config, "ab") as f:
                # A .config without a final newline would glue its last line to ours.
                if current and not current.endswith(b"\n"):
                    f.write(b"\n")
                f.write(fragment.encode("utf-8"))
            progress.update("ktstr.kconfig + extra fragment merged; make olddefconfig")
            run_make(src, ["olddefconfig"], make_vars=make_vars)
        if before is not None and config.read_bytes() == before:
            # On a real tree some baked lines can never survive (arm-only
            # symbols on x86...), so the probe fails and olddefconfig reruns;
            # when it changed nothing, keep the old mtime.
            os.utime(config, ns=(before_stat.st_atime_ns, before_stat.st_mtime_ns))
    except BaseException as e:
        _restore(src, before)
        if isinstance(e, KtstrError) and e.kind in ("make-failed", "make-timeout"):
            # The caller (pipeline.phase_configure) adds the "kernel configure failed" context.
            raise KtstrError(str(e), kind="configure-failed") from e
        raise
    return config.read_bytes() != before


def _restore(src: Path, before: bytes | None) -> None:
    config = src / ".config"
    if before is None:
        config.unlink(missing_ok=True)
    else:
        config.write_bytes(before)


# --- validation ------------------------------------------------------------

# ktstr's critical options and their hints, as ktstr lists them (every one is =y in ktstr.kconfig).
CRITICAL_OPTIONS: tuple[tuple[str, str], ...] = (
    (
        "CONFIG_SCHED_CLASS_EXT",
        "depends on CONFIG_DEBUG_INFO_BTF — ensure pahole >= 1.16 is installed (dwarves package)",
    ),
    ("CONFIG_DEBUG_INFO_BTF", "requires pahole >= 1.16 (dwarves package)"),
    ("CONFIG_BPF_SYSCALL", "required for BPF program loading"),
    (
        "CONFIG_FTRACE",
        "gate for all tracing infrastructure — arm64 defconfig disables it, "
        "silently dropping KPROBE_EVENTS and BPF_EVENTS",
    ),
    ("CONFIG_KPROBE_EVENTS", "required for ktstr probe pipeline (depends on FTRACE + KPROBES)"),
    (
        "CONFIG_BPF_EVENTS",
        "required for BPF kprobe/tracepoint attachment (depends on KPROBE_EVENTS + PERF_EVENTS)",
    ),
)


@dataclass(frozen=True)
class Missing:
    option: str
    hint: str


def validate_kernel_config(src: Path) -> list[Missing]:
    """Critical options not ``=y`` in ``<src>/.config`` (trimmed lines), in ktstr's order."""
    path = Path(src) / ".config"
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise KtstrError(f"read {path}: {e.strerror or e}", kind="validation") from e
    have = {line.strip() for line in text.splitlines()}
    return [Missing(opt, hint) for opt, hint in CRITICAL_OPTIONS if f"{opt}=y" not in have]


def format_validation_error(missing: list[Missing]) -> str:
    msg = "kernel build completed but critical config options are missing:\n"
    for m in missing:
        msg += f"  {m.option} not set — {m.hint}\n"
    msg += (
        "\nThe kernel build system silently disables options whose dependencies "
        "are not met. Install missing tools and rebuild with --force."
    )
    return msg
