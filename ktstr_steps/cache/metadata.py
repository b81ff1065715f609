"""``metadata.json``: ktstr's schema, written and read exactly as ktstr's serde does.

``metadata.json`` carries ktstr's fields only (with ``extra_kconfig_hash``).
ktstr deserializes it with serde and no compat shims: an extra top-level field
would be ignored by today's serde defaults, but a future ``deny_unknown_fields``
would turn every CI entry into a corrupt one, so anything ktstr-ci wants to
remember about a build goes into a separate ``ktstr-ci.json`` next to it (ktstr
never opens other files in an entry). A file that cannot be used is a
:class:`MetadataError` whose ``kind`` is ktstr's ``error_kind`` and whose
message is ktstr's reason string.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ktstr_steps.errors import KtstrError, os_error_text

METADATA = "metadata.json"
PROVENANCE = "ktstr-ci.json"


def utc_now() -> str:
    """``built_at`` format: UTC ``YYYY-MM-DDTHH:MM:SSZ``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class MetadataError(KtstrError):
    """metadata.json could not be used; ``kind`` is ktstr's ``error_kind`` and the
    message is ktstr's reason string (``metadata.json schema drift: ...`` etc.)."""


class _Drift(Exception):
    """A serde "Data" error: valid JSON of the wrong shape."""


def _opt_str(obj: dict, name: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise _Drift(f"invalid type for `{name}`: expected a string or null, got {_jtype(value)}")
    return value


def _req(obj: dict, name: str) -> Any:
    if name not in obj:
        raise _Drift(f"missing field `{name}`")
    return obj[name]


def _req_str(obj: dict, name: str) -> str:
    value = _req(obj, name)
    if not isinstance(value, str):
        raise _Drift(f"invalid type for `{name}`: expected a string, got {_jtype(value)}")
    return value


def _req_bool(obj: dict, name: str) -> bool:
    value = _req(obj, name)
    if not isinstance(value, bool):
        raise _Drift(f"invalid type for `{name}`: expected a boolean, got {_jtype(value)}")
    return value


def _opt_int(obj: dict, name: str, lo: int, hi: int) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    # serde's u64/i64 take JSON integers only: no floats, no booleans.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Drift(f"invalid type for `{name}`: expected an integer, got {_jtype(value)}")
    if not lo <= value <= hi:
        raise _Drift(f"invalid value for `{name}`: {value} is out of range")
    return value


def _jtype(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int | float):
        return f"number `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    return "array" if isinstance(value, list) else "map"


@dataclass(frozen=True)
class KernelSource:
    """ktstr's ``KernelSource``: serde-tagged on ``type``; payload fields are nullable."""

    type: str  # "tarball" | "git" | "local"
    git_hash: str | None = None
    ref: str | None = None
    source_tree_path: str | None = None

    @classmethod
    def tarball(cls) -> KernelSource:
        return cls("tarball")

    @classmethod
    def git(cls, git_hash: str | None, ref: str | None) -> KernelSource:
        return cls("git", git_hash=git_hash, ref=ref)

    @classmethod
    def local(cls, source_tree_path: str | Path | None, git_hash: str | None) -> KernelSource:
        path = None if source_tree_path is None else str(source_tree_path)
        return cls("local", git_hash=git_hash, source_tree_path=path)

    def to_json(self) -> dict[str, Any]:
        if self.type == "tarball":
            return {"type": "tarball"}
        if self.type == "git":
            return {"type": "git", "git_hash": self.git_hash, "ref": self.ref}
        if self.type == "local":
            return {
                "type": "local",
                "source_tree_path": self.source_tree_path,
                "git_hash": self.git_hash,
            }
        raise KtstrError(f"unknown kernel source type {self.type!r}", kind="bad-metadata")

    @classmethod
    def from_json(cls, obj: Any) -> KernelSource:
        if not isinstance(obj, dict):
            raise _Drift(
                f"invalid type for `source`: expected an internally tagged enum, got {_jtype(obj)}"
            )
        kind = obj.get("type")
        if kind is None:
            raise _Drift("missing field `type`")
        if kind == "tarball":
            return cls.tarball()
        if kind == "git":
            return cls.git(_opt_str(obj, "git_hash"), _opt_str(obj, "ref"))
        if kind == "local":
            return cls.local(_opt_str(obj, "source_tree_path"), _opt_str(obj, "git_hash"))
        raise _Drift(
            f"unknown variant {json.dumps(kind)}, expected one of `tarball`, `git`, `local`"
        )

    def __str__(self) -> str:
        return self.type


@dataclass(frozen=True)
class KernelMetadata:
    """ktstr's ``KernelMetadata``: field names and JSON types exactly."""

    source: KernelSource
    arch: str
    image_name: str
    built_at: str
    version: str | None = None
    config_hash: str | None = None
    ktstr_kconfig_hash: str | None = None
    extra_kconfig_hash: str | None = None
    has_vmlinux: bool = False
    vmlinux_stripped: bool = False
    source_vmlinux_size: int | None = None
    source_vmlinux_mtime_secs: int | None = None

    def to_json(self) -> dict[str, Any]:
        # serde's field order; every Option is written as an explicit null.
        return {
            "version": self.version,
            "source": self.source.to_json(),
            "arch": self.arch,
            "image_name": self.image_name,
            "config_hash": self.config_hash,
            "built_at": self.built_at,
            "ktstr_kconfig_hash": self.ktstr_kconfig_hash,
            "extra_kconfig_hash": self.extra_kconfig_hash,
            "has_vmlinux": self.has_vmlinux,
            "vmlinux_stripped": self.vmlinux_stripped,
            "source_vmlinux_size": self.source_vmlinux_size,
            "source_vmlinux_mtime_secs": self.source_vmlinux_mtime_secs,
        }

    def dumps(self) -> str:
        """serde_json::to_string_pretty: 2-space indent, raw UTF-8, no trailing newline."""
        try:
            return json.dumps(self.to_json(), indent=2, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise KtstrError(
                f"cannot serialize cache metadata: {exc}", kind="bad-metadata"
            ) from exc

    @classmethod
    def from_json(cls, text: str) -> KernelMetadata:
        """Parse like ktstr's ``read_metadata``; :class:`MetadataError` names the failure class."""
        try:
            obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
        except json.JSONDecodeError as exc:
            kind, label = _classify_decode_error(text, exc)
            raise MetadataError(f"metadata.json {label}: {exc}", kind=kind) from None
        except _Drift as exc:
            raise MetadataError(f"metadata.json schema drift: {exc}", kind="schema_drift") from None
        except (ValueError, RecursionError) as exc:
            # Anything the decoder throws that is not a syntax/EOF error (e.g. an
            # integer literal longer than Python's digit limit).
            raise MetadataError(f"metadata.json parse error: {exc}", kind="parse_error") from None
        try:
            if not isinstance(obj, dict):
                raise _Drift(f"invalid type: {_jtype(obj)}, expected struct KernelMetadata")
            source = KernelSource.from_json(_req(obj, "source"))
            meta = cls(
                source=source,
                arch=_req_str(obj, "arch"),
                image_name=_req_str(obj, "image_name"),
                built_at=_req_str(obj, "built_at"),
                version=_opt_str(obj, "version"),
                config_hash=_opt_str(obj, "config_hash"),
                ktstr_kconfig_hash=_opt_str(obj, "ktstr_kconfig_hash"),
                extra_kconfig_hash=_opt_str(obj, "extra_kconfig_hash"),
                has_vmlinux=_req_bool(obj, "has_vmlinux"),
                vmlinux_stripped=_req_bool(obj, "vmlinux_stripped"),
                source_vmlinux_size=_opt_int(obj, "source_vmlinux_size", 0, 2**64 - 1),
                source_vmlinux_mtime_secs=_opt_int(
                    obj, "source_vmlinux_mtime_secs", -(2**63), 2**63 - 1
                ),
            )
        except _Drift as exc:
            raise MetadataError(f"metadata.json schema drift: {exc}", kind="schema_drift") from None
        return meta


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Drift(f"duplicate field `{k}`")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    # serde_json rejects NaN/Infinity; Python would accept them.
    raise json.JSONDecodeError(f"invalid literal {name}", name, 0)


def _classify_decode_error(text: str, exc: json.JSONDecodeError) -> tuple[str, str]:
    """serde's Eof vs Syntax: the input ended before the value did, or it is just wrong."""
    if exc.msg.startswith("invalid literal"):
        return "malformed", "malformed"
    if exc.msg.startswith("Unterminated string") or exc.pos >= len(text.rstrip()):
        return "truncated", "truncated"
    return "malformed", "malformed"


def read_metadata(entry_dir: Path) -> KernelMetadata:
    """``<entry>/metadata.json`` or :class:`MetadataError` with ktstr's reason prefix."""
    path = Path(entry_dir) / METADATA
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MetadataError("metadata.json missing", kind="missing") from None
    except OSError as exc:
        raise MetadataError(
            f"metadata.json unreadable: {os_error_text(exc)}", kind="unreadable"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MetadataError(
            "metadata.json unreadable: stream did not contain valid UTF-8", kind="unreadable"
        ) from None
    return KernelMetadata.from_json(text)


IMAGE_MISSING_PREFIX = "image file "
IMAGE_MISSING_SUFFIX = " missing from entry directory"


def classify_corrupt_reason(reason: str) -> str:
    """ktstr's reason → ``error_kind`` mapping of a corrupt entry."""
    if reason == "metadata.json missing":
        return "missing"
    for prefix, kind in (
        ("metadata.json unreadable: ", "unreadable"),
        ("metadata.json schema drift: ", "schema_drift"),
        ("metadata.json malformed: ", "malformed"),
        ("metadata.json truncated: ", "truncated"),
        ("metadata.json parse error: ", "parse_error"),
    ):
        if reason.startswith(prefix):
            return kind
    if (
        reason.startswith(IMAGE_MISSING_PREFIX)
        and reason.endswith(IMAGE_MISSING_SUFFIX)
        and len(reason) > len(IMAGE_MISSING_PREFIX) + len(IMAGE_MISSING_SUFFIX)
    ):
        return "image_missing"
    return "unknown"


# Every error_kind a corrupt entry can have (registered in ktstr_steps.results).
CORRUPT_KINDS = (
    "missing", "unreadable", "schema_drift", "malformed", "truncated", "parse_error",
    "image_missing", "unknown",
)  # fmt: skip
