"""The web UI's part of the config: views, login, who may do what, the ``base`` change hook.

Other parts add their own web pieces: the records dashboard
(:mod:`master.records.part`), the downloads (:mod:`master.artifacts`) and the
GitHub and GitLab change hooks (:mod:`master.webhooks`).

Authorization (Buildbot allows everything no rule matches, so every control
endpoint has a rule):

* anonymous users read everything (builds, logs, dashboards) unless
  ``web.anonymous_read = false``, and control nothing;
* every user of the web users file has the role ``developers``: force, stop
  and rebuild builds;
* ``web.admins`` also have ``admins``: every other control action (pause
  workers, cancel build requests, enable schedulers, ...).

The change hook (``/change_hook/base``) sits behind HTTP Basic auth with the
hook user and the generated hook password. A missing secret file (for example
``buildbot checkconfig`` on a fresh clone) yields a random password nobody
knows, so the hook is refused rather than open. Its ``base`` dialect is
:class:`master.changehook.BaseChangeHook`, which refuses a malformed change
with a 400 before anything is stored; the login is
:class:`master.frontdoor.SiteAuth`, which also makes the site refuse oversized
bodies (413) and out-of-range REST numbers (400/404).
"""

from __future__ import annotations

import logging
import secrets as _secrets
from typing import Any

from buildbot.plugins import util
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse

from master.changehook import BaseChangeHook
from master.frontdoor import SiteAuth
from master.parts import ConfigPart
from settings import Settings, read_secret, read_users

log = logging.getLogger(__name__)

DEVELOPERS = "developers"
ADMINS = "admins"


def authz(settings: Settings, users: dict[str, str]) -> util.Authz:
    rules: list[Any] = [
        util.ForceBuildEndpointMatcher(role=DEVELOPERS),
        util.StopBuildEndpointMatcher(role=DEVELOPERS),
        util.RebuildBuildEndpointMatcher(role=DEVELOPERS),
        util.AnyControlEndpointMatcher(role=ADMINS),
    ]
    if not settings.web.anonymous_read:
        rules.append(util.AnyEndpointMatcher(role=DEVELOPERS))
    admins = [u for u in settings.web.admins if u in users]
    return util.Authz(
        allowRules=rules,
        roleMatchers=[
            util.RolesFromUsername(roles=[DEVELOPERS], usernames=sorted(users)),
            util.RolesFromUsername(roles=[ADMINS, DEVELOPERS], usernames=admins),
        ],
    )


def hook_checker(settings: Settings) -> InMemoryUsernamePasswordDatabaseDontUse:
    password = read_secret(settings.hook.password_file)
    if password is None:
        log.warning(
            "ktstr-ci: hook password file %s is missing; the change hook refuses every request "
            "until `make run` (python -m launcher start) generates it",
            settings.hook.password_file,
        )
        password = _secrets.token_urlsafe(32)
    return InMemoryUsernamePasswordDatabaseDontUse(**{settings.hook.user: password.encode()})


def config_part(settings: Settings) -> ConfigPart:
    """The web server, its views, login and authorization, and the ``base`` change hook."""
    users = read_users(settings.web.users_file)
    return ConfigPart(
        feature="web",
        www={
            "port": f"tcp:{settings.web.port}:interface={settings.web.bind}",
            "auth": SiteAuth(users),
            "authz": authz(settings, users),
            "change_hook_auth": [hook_checker(settings)],
        },
        www_plugins={"waterfall_view": {}, "console_view": {}, "grid_view": {}},
        dialects={
            "base": {
                "custom_class": BaseChangeHook,
                "repositories": [r.url for r in settings.repos],
            }
        },
    )
