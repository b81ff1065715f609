"""The kernel build pages as a view inside Buildbot's web UI (a ``buildbot.www`` plugin).

Buildbot's React shell loads ``plugins/ktstr/scripts.js`` (``static/``), which
registers the **Kernel builds** menu group and its routes (``#/ktstr``,
``#/ktstr/branch?name=``, ``#/ktstr/trends``, ``#/ktstr/cache``,
``#/ktstr/matrix``). Each route fetches its page from the records dashboard
(:mod:`master.dashboard`, a Flask app mounted at ``plugins/ktstr/dash/``) and
draws the page's plots with Chart.js (``static/chart.umd.min.js``, fetched from
npm by ``make webui-assets``). Every page's data is also JSON at
``plugins/ktstr/dash/<page>.json``.

A plugin view rather than a ``wsgi_dashboards`` entry: 4.3's React wrapper of
those fetches only ``index.html`` and inserts it as inert HTML, so it can
neither take a page's parameters from the route nor run the plots' script.

The plugin is found through the ``buildbot.www`` entry point ``ktstr`` in
``pyproject.toml``; ``c['www']['plugins']['ktstr'] = {"app": <Flask app>}``
(see :func:`plugin_config`) switches it on.
"""

from __future__ import annotations

from typing import Any

from buildbot.www.plugin import Application
from twisted.internet import reactor
from twisted.internet.threads import blockingCallFromThread
from twisted.web.wsgi import WSGIResource

PLUGIN_NAME = "ktstr"
# Where the dashboard app answers, under the plugin's root.
DASH_CHILD = b"dash"


class KtstrWebUI(Application):
    """The static files of the view plus the dashboard app beside them."""

    def setConfiguration(self, config: Any) -> None:
        super().setConfiguration(config)
        app = config["app"]
        # The dashboard resolves build links through the Data API (as wsgi_dashboards does).
        app.buildbot_api = self
        self.resource.putChild(DASH_CHILD, WSGIResource(reactor, reactor.getThreadPool(), app))

    def dataGet(self, path: Any, **kwargs: Any) -> Any:
        """The Data API from the WSGI thread: blocks this thread, never the reactor."""
        if not isinstance(path, tuple):
            path = tuple(path.strip("/").split("/"))
        return blockingCallFromThread(reactor, self.master.data.get, path, **kwargs)


def plugin_config(app: Any) -> dict[str, Any]:
    """The value of ``c['www']['plugins']['ktstr']``.

    Only the app: this dict is also sent to every browser as part of the UI's
    configuration, so nothing in it may carry a database URL or a password.
    """
    return {"app": app}


ep = KtstrWebUI(__name__, "ktstr-ci kernel build pages")
