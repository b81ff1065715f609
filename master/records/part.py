"""The records' part of the config: the service that writes the rows, the dashboard that shows them.

* :class:`master.records.service.RecordsService` on ``databases.records``,
  registered under the name the record and matrix steps look it up by;
* the kernel build pages (:mod:`master.dashboard`) as the ``ktstr`` www
  plugin (:mod:`master.webui`), inside Buildbot's UI: overview, branch
  history, trends, the kernel cache, matrix runs.
"""

from __future__ import annotations

from master.dashboard import plugin_entry
from master.parts import ConfigPart
from master.records.service import RecordsService
from settings import Settings


def config_part(settings: Settings) -> ConfigPart:
    """The records service and the dashboard over the same database."""
    return ConfigPart(
        feature="records",
        services=[RecordsService(db_url=settings.databases.records)],
        www_plugins={"ktstr": plugin_entry(settings.databases.records,
                                           cache_root=str(settings.paths.kernel_cache))},
    )
