"""``/change_hook/base``: validate a posted change before anything is stored.

Buildbot's own ``base`` dialect stores whatever it is sent: a malformed body
became a change, ``zzzz`` or ``$(reboot)`` revisions were scheduled, and change
properties could set build properties such as ``profile`` or ``force``. This
handler (``custom_class`` of the ``base`` dialect) checks every field first and
raises :class:`ValueError`, which Buildbot's change hook resource answers with
HTTP 400 and the message as the body; nothing is stored. Bodies over the size
limit never reach it (:mod:`master.frontdoor` answers 413).

The rules, each in one place:

* POST only, form-encoded, as the bare repository's post-receive hook sends;
  every field at most once;
* ``revision``, ``branch`` and ``repository`` are required; the revision is a
  full commit id and the branch passes the one branch rule
  (:mod:`ktstr_steps.refnames`); the repository is one of ``[[repos]]``;
* ``codebase`` is empty (ktstr-ci's repositories have the one codebase ``""``,
  a change of another codebase would be stored and never built);
* text fields fit Buildbot's columns, have no NUL and are UTF-8;
  ``when_timestamp`` is seconds since 1970; ``files`` a JSON list of paths;
* ``properties`` a JSON object whose names are not build properties: a change
  property would otherwise become a build property (Buildbot applies change
  properties first, and a builder's *default* properties such as ``profile``
  do not override them). Such a change is refused, not trimmed, so the sender
  learns it at once. The reserved names are read from the running
  configuration (builders, workers, schedulers, the force form) plus the
  properties Buildbot and the kernel build set themselves.
"""

from __future__ import annotations

import json
import math
from typing import Any

from buildbot.www.hooks.base import BaseHookHandler
from twisted.internet import defer

from ktstr_steps.buildsteps.factory import KERNEL_PROPERTIES
from ktstr_steps.refnames import RULE, branch_problem, revision_problem, shown

# Buildbot's changes table (varchar columns are enforced on PostgreSQL).
TEXT_LIMITS = {
    "author": 255, "committer": 255, "category": 255, "revlink": 256,
    "repository": 512, "project": 512, "codebase": 256,
}  # fmt: skip
FILE_LIMIT = 1024
PROPERTY_NAME_LIMIT = 256
REQUIRED = ("revision", "branch", "repository")
# Fields of the base dialect; "who" and "when" are Buildbot's older names.
FIELDS = (
    "revision", "branch", "repository", "project", "category", "author", "who", "committer",
    "comments", "revlink", "codebase", "when_timestamp", "when", "files", "properties",
)  # fmt: skip
# 9999-12-31: beyond it Buildbot cannot turn the timestamp into a date.
MAX_TIMESTAMP = 253402300799
# Properties every build gets from Buildbot itself, or from the kernel build's steps.
BUILDBOT_PROPERTIES = frozenset({
    "branch", "revision", "repository", "codebase", "project", "buildnumber", "buildername",
    "builderid", "workername", "builddir", "basedir", "scheduler", "owner", "owners", "reason",
    "got_revision", "event", "virtual_builder_name", "virtual_builder_description",
    "virtual_builder_tags", "virtual_builder_project",
})  # fmt: skip


class Refused(ValueError):
    """A change the hook does not store; Buildbot answers 400 with the message."""


def reserved_properties(config: Any) -> frozenset[str]:
    """Names a change may not set: every property some part of ``config`` gives a build."""
    names = set(BUILDBOT_PROPERTIES) | set(KERNEL_PROPERTIES)
    names |= set(getattr(config, "properties", {}) or {})
    for b in getattr(config, "builders", []) or []:
        names |= set(b.properties or {}) | set(b.defaultProperties or {})
    for w in getattr(config, "workers", []) or []:
        names |= set(w.properties.asDict())
    for s in (getattr(config, "schedulers", {}) or {}).values():
        props = getattr(s, "properties", None)
        if props is not None:
            names |= set(props.asDict())
        names |= _form_fields(getattr(s, "forcedProperties", None) or [])
    return frozenset(names)


def _form_fields(params: list[Any]) -> set[str]:
    out: set[str] = set()
    for p in params:
        if getattr(p, "name", ""):
            out.add(p.name)
        out |= _form_fields(getattr(p, "fields", None) or [])
    return out


class BaseChangeHook(BaseHookHandler):
    """The ``base`` dialect with validation; options: ``repositories`` (the urls)."""

    def getChanges(self, request: Any) -> defer.Deferred:
        try:
            chdict = self.validate(request)
        except Refused as exc:
            # One ASCII line: it is also the HTTP status line's reason phrase.
            msg = str(exc).encode("ascii", "backslashreplace").decode("ascii")
            return defer.fail(Refused(msg))
        return defer.succeed(([chdict], None))

    def validate(self, request: Any) -> dict[str, Any]:
        if request.method != b"POST":
            raise Refused("use POST: a change is sent as a form-encoded POST body")
        fields = self._fields(request)
        missing = [f for f in REQUIRED if not fields.get(f)]
        if missing:
            ctype = (request.getHeader(b"content-type") or b"").decode("latin-1")
            hint = "" if "form" in ctype else (
                f" (the body is {ctype or 'without a Content-Type'}; send the fields "
                "form-encoded, application/x-www-form-urlencoded, as the post-receive hook does)"
            )
            raise Refused(f"missing field {', '.join(missing)}{hint}")
        revision, branch, repository = (fields[f] for f in REQUIRED)
        problem = revision_problem(revision)
        if problem is not None:
            raise Refused(f"revision {shown(revision)}: {problem}")
        if set(revision) == {"0"}:
            raise Refused("revision is all zeros (a deleted branch): nothing to build; "
                          "send only updated branches")
        problem = branch_problem(branch)
        if problem is not None:
            raise Refused(f"branch {shown(branch)}: {problem}; {RULE}")
        known = list((self.options or {}).get("repositories", []))
        if repository not in known:
            raise Refused(f"repository {shown(repository)} is not one of ktstr-ci's repositories "
                          f"(the url of a [[repos]] entry): {', '.join(known)}")
        for name, limit in TEXT_LIMITS.items():
            value = fields.get(name)
            if value is not None and len(value) > limit:
                raise Refused(f"{name} is {len(value)} characters long; the limit is {limit}")
        if fields.get("codebase"):
            raise Refused(f"codebase {shown(fields['codebase'])}: must be empty (ktstr-ci's "
                          "repositories have the one codebase '')")
        return {
            "author": fields.get("author") or fields.get("who") or "",
            "committer": fields.get("committer"),
            "files": self._files(fields.get("files")),
            "comments": fields.get("comments") or "",
            "revision": revision,
            "when_timestamp": self._when(fields.get("when_timestamp") or fields.get("when")),
            "branch": branch,
            "category": fields.get("category"),
            "revlink": fields.get("revlink") or "",
            "properties": self._properties(fields.get("properties")),
            "repository": repository,
            "project": fields.get("project") or "",
            "codebase": "",
        }

    @staticmethod
    def _fields(request: Any) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, values in (request.args or {}).items():
            name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            if name not in FIELDS:
                continue  # Buildbot ignores other fields too
            if len(values) != 1:
                raise Refused(f"field {name} is given {len(values)} times; give it once")
            raw = values[0]
            try:
                text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            except UnicodeDecodeError:
                raise Refused(f"field {name} is not UTF-8 text") from None
            if "\x00" in text:
                raise Refused(f"field {name} contains a NUL character")
            out[name] = text
        return out

    @staticmethod
    def _when(text: str | None) -> float | None:
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0 <= value <= MAX_TIMESTAMP):
            raise Refused(f"when_timestamp {shown(text)} is not seconds since 1970 (a number "
                          f"from 0 to {MAX_TIMESTAMP}, e.g. the output of `git show -s --format=%ct`)")
        return value

    @staticmethod
    def _files(text: str | None) -> list[str]:
        if not text:
            return []
        try:
            files = json.loads(text)
        except ValueError:
            files = None
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise Refused(f"files {shown(text)} is not a JSON list of file names")
        for f in files:
            if len(f) > FILE_LIMIT or "\x00" in f:
                raise Refused(f"files: {shown(f)} is not a file name of at most "
                              f"{FILE_LIMIT} characters")
        return files

    def _properties(self, text: str | None) -> dict[str, Any]:
        if not text:
            return {}
        try:
            props = json.loads(text)
        except ValueError:
            props = None
        if not isinstance(props, dict):
            raise Refused(f"properties {shown(text)} is not a JSON object of name: value")
        reserved = reserved_properties(self.master.config)
        for name in props:
            if len(name) > PROPERTY_NAME_LIMIT or "\x00" in name:
                raise Refused(f"property name {shown(name)} is longer than "
                              f"{PROPERTY_NAME_LIMIT} characters")
            if name in reserved:
                raise Refused(
                    f"property {shown(name)} is a build property; a change may not set it "
                    "(builders, workers and the force form set build properties). "
                    "Rename or remove it"
                )
        return props
