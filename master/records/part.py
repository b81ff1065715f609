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
from master.records.compare import AlertRules
from master.records.service import RecordsService
from settings import Settings


def alert_rules(settings: Settings) -> AlertRules:
    """The ``[alerts]`` table as the records service applies it (0 % = that rule off)."""
    a = settings.alerts
    return AlertRules(
        new_warnings=a.new_warnings,
        bzimage_growth_pct=a.bzimage_growth_pct or None,
        make_time_growth_pct=a.make_time_growth_pct or None,
        make_time_min_seconds=a.make_time_min_seconds,
    )


def config_part(settings: Settings) -> ConfigPart:
    """The records service and the dashboard over the same database."""
    return ConfigPart(
        feature="records",
        services=[RecordsService(db_url=settings.databases.records,
                                 alerts=alert_rules(settings))],
        www_plugins={"ktstr": plugin_entry(settings.databases.records,
                                           cache_root=str(settings.paths.kernel_cache))},
    )
