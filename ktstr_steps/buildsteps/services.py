"""The master's services the steps use, found by their service name at run time.

The steps never import the master. A step asks the master's service manager
for a service by its name and talks to it through a Protocol of what the step
needs; the master's services (``master/records/service.py``,
``master/artifacts.py``) register under the names defined here. A service that
is not configured never fails a build: the step says so in its summary
(WARNINGS for the records, SKIPPED for downloads).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

RECORDS_SERVICE_NAME = "ktstr_records"
ARTIFACTS_SERVICE_NAME = "ktstr_artifacts"


@runtime_checkable
class RecordsService(Protocol):
    """What the record and matrix steps need from the master's records service.

    The record step also uses ``get_row(rowid)`` (a Deferred firing with the written
    row, whose ``alerts`` it reports) when the service has it; it is not part of the
    Protocol, so a service without it is still found and simply reports no alerts.
    """

    def record(self, row: dict[str, Any]) -> Any:
        """Write one ``kernel_builds`` row; a Deferred firing with its id.

        Fails with an exception whose ``spooled`` attribute is true when the row
        waits in the service's spool for the database to come back."""
        ...

    def start_matrix_run(self, *, versions: list[str], profiles: list[str],
                         spec: str | None = None, buildid: int | None = None) -> Any:
        """Create a ``matrix_runs`` row; a Deferred firing with its id."""
        ...

    def finish_matrix_run(self, run_id: int, *,
                          totals: Mapping[str, int] | None = None) -> Any:
        """Close a run; a Deferred firing with the row (``cells``, ``built``, ...)."""
        ...


class ArtifactsService(Protocol):
    """What the publish step needs from the master's artifacts service."""

    root: Path
    max_file_bytes: int | None

    def url_for(self, builder_dir: str, number: int, name: str = "") -> str: ...

    def published(self, builder_dir: str) -> Any: ...  # Deferred; applies retention

    # Deferred firing with the newest published build of a cache entry, or None:
    # {"dir", "builder_dir", "number", "files": {name: {"size", "sha256"}}, ...}
    def find_entry(self, cache_key: str) -> Any: ...


def services_of(master: Any) -> Mapping[str, Any]:
    """The master's configured services by name (``c['services']``).

    Buildbot 4.3 keeps them in ``master.service_manager.namedServices``, not in
    ``master.namedServices``.
    """
    manager = getattr(master, "service_manager", None)
    return getattr(manager, "namedServices", None) or {}


def find_artifacts_service(master: Any) -> ArtifactsService | None:
    """The master's artifacts service, or None when downloads are not configured."""
    return services_of(master).get(ARTIFACTS_SERVICE_NAME)


def find_records_service(master: Any) -> tuple[RecordsService | None, str | None]:
    """The master's records service, or ``(None, why)``: a missing one is a warning, not a crash.

    A records service given another name (its ``name`` argument) is still found
    by what it offers.
    """
    named = services_of(master)
    svc = named.get(RECORDS_SERVICE_NAME)
    if isinstance(svc, RecordsService):
        return svc, None
    for candidate in named.values():
        if isinstance(candidate, RecordsService):
            return candidate, None
    return None, "no records service configured"


__all__ = [
    "ARTIFACTS_SERVICE_NAME",
    "RECORDS_SERVICE_NAME",
    "ArtifactsService",
    "RecordsService",
    "find_artifacts_service",
    "find_records_service",
    "services_of",
]
