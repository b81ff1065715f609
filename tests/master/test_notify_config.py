"""The statuses and notifications part: which reporters, for which builds, and its settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from buildbot.config.errors import ConfigErrors
from buildbot.reporters.http import HttpStatusPush
from buildbot.reporters.mail import MailNotifier

import settings
from master import notify
from tests.support.settingskit import GOOD_WEBHOOKS, load

POLLER = """
[[external.pollers]]
name = "up"
url = "https://github.com/sched-ext/linux.git"
branches = ["for-next"]
interval = 60
profiles = ["tiny"]
service = "github"
project = "sched-ext/up"
"""


@pytest.fixture(autouse=True)
def no_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(settings.ENV_VAR, raising=False)


def with_tokens(tmp_path: Path, extra: str = "") -> str:
    (tmp_path / "gh.token").write_text("ghp_x\n")
    return GOOD_WEBHOOKS + POLLER + f"""
[external]
github_token_file = "{tmp_path / 'gh.token'}"
github_api = "http://127.0.0.1:9/api/"
{extra}"""


def test_nothing_configured_no_reporters(tmp_path: Path) -> None:
    assert notify.config_part(load(tmp_path, "")).services == []


def test_github_statuses_for_webhook_and_poller_builders(tmp_path: Path) -> None:
    s = load(tmp_path, with_tokens(tmp_path))
    assert s.external.statuses.github_api == "http://127.0.0.1:9/api"
    (svc,) = notify.config_part(s).services  # no GitLab token: no GitLab reporter
    assert isinstance(svc, notify.ProjectGitHubStatusPush)
    assert svc.name == "ktstr-status-github"
    kwargs = svc._config_kwargs
    assert kwargs["poller_projects"] == {f"up-{p}": "sched-ext/up" for p in s.profiles}
    (gen,) = kwargs["generators"]
    # The webhook's repo and the poller, every profile; never the local bare repo.
    assert sorted(gen.builders) == sorted(
        [f"gh-{p}" for p in s.profiles] + [f"up-{p}" for p in s.profiles])


def _reporter(poller_projects: dict[str, str]) -> notify.ProjectGitHubStatusPush:
    rep = object.__new__(notify.ProjectGitHubStatusPush)
    rep.poller_projects = poller_projects
    return rep


def test_project_of_a_build() -> None:
    rep = _reporter({"up-tiny": "sched-ext/up"})
    hooked = {"builder": {"name": "gh-tiny"}, "properties": {
        "external_service": ("github", "Change"), "external_project": ("a/b", "Change")}}
    assert rep.project_of(hooked) == "a/b"
    gitlab = {"builder": {"name": "gh-tiny"}, "properties": {
        "external_service": ("gitlab", "Change"), "external_project": ("g/p", "Change")}}
    assert rep.project_of(gitlab) is None
    assert rep.project_of({"builder": {"name": "up-tiny"}, "properties": {}}) == "sched-ext/up"
    # A push to the local bare repository on the same builder: nothing to report on.
    assert rep.project_of({"builder": {"name": "gh-tiny"}, "properties": {}}) is None


def test_missing_token_file_is_one_clear_config_error(tmp_path: Path) -> None:
    s = load(tmp_path, with_tokens(tmp_path))
    (tmp_path / "gh.token").unlink()
    with pytest.raises(ConfigErrors) as err:
        notify.config_part(s)
    (msg,) = err.value.errors
    assert msg.startswith(f"[external] github_token_file {tmp_path / 'gh.token'} is missing")
    assert 'set the key to "" to send no commit statuses' in msg


def test_mail_and_posts(tmp_path: Path) -> None:
    s = load(tmp_path, """
[notify]
mail_to = ["team@example.org"]
smtp_host = "mail.example.org"
smtp_port = 2525
post_urls = ["https://a.example/hook", "http://b.example/x"]
""")
    mail, post_a, post_b = notify.config_part(s).services
    assert isinstance(mail, MailNotifier)
    assert mail._config_kwargs["extraRecipients"] == ["team@example.org"]
    assert mail._config_kwargs["sendToInterestedUsers"] is False
    assert mail._config_kwargs["relayhost"] == "mail.example.org"
    assert isinstance(mail._config_kwargs["generators"][0], notify.BranchTurnGenerator)
    assert isinstance(post_a, HttpStatusPush) and post_a.name == "ktstr-post-0"
    assert post_b._config_args[0] == "http://b.example/x"


@pytest.mark.parametrize(("toml", "message"), [
    ('[notify]\nmail_to = ["not an address"]\n',
     "notify.mail_to entry 0 'not an address' is not a"),
    ('[notify]\npost_urls = ["ftp://x"]\n', "notify.post_urls entry 0 'ftp://x' must be an http"),
    ('[external]\ngithub_api = "api.github.com"\n', "external.github_api must be an http(s) URL"),
    (POLLER.replace('service = "github"\n', ""),
     "pollers[0].service is missing: service and project go together"),
    (POLLER.replace('"github"', '"gitea"'), 'service must be "github" or "gitlab"'),
])
def test_bad_settings_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(settings.SettingsError) as err:
        load(tmp_path, toml)
    assert message in str(err.value)


def test_end_description() -> None:
    build = {"results": 2, "state_string": "failed make (failure)",
             "properties": {"kernel_outcome": ("failed", "Record")}}
    assert notify.end_description(build) == "failure: kernel failed (failed make (failure))"
    assert notify.end_description({"results": 0, "properties": {}}) == "success: no kernel outcome"
    long = notify.end_description({"results": 0, "state_string": "x" * 300, "properties": {}})
    assert len(long) == notify.DESCRIPTION_MAX and long.endswith("…")
