"""[external] settings: validation errors name the key; the config pieces they turn into.

The config tests build the real ``BuildmasterConfig`` (``build_config``) and
run ``buildbot checkconfig`` on the checkout's real ``master.cfg``; the
webhooks and pollers on a running master are in ``test_external_service.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from buildbot.changes.gitpoller import GitPoller
from buildbot.config.errors import ConfigErrors
from buildbot.schedulers.basic import AnyBranchScheduler
from buildbot.schedulers.forcesched import ForceScheduler

import settings
from master import builders, webhooks
from settings.worker_specs import WorkerSpec
from tests.support.cli import run_checkconfig
from tests.support.servicekit import standin_factory
from tests.support.settingskit import GOOD_WEBHOOKS, load, write_settings

GOOD_POLLERS = """
[[external.pollers]]
name = "scx-next"
url = "https://git.kernel.org/pub/scm/linux/kernel/git/tj/sched_ext.git"
branches = ["for-next", "for-6\\\\.1[0-9]"]
interval = 300
profiles = ["tiny", "preempt"]
"""


@pytest.fixture(autouse=True)
def no_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(settings.ENV_VAR, raising=False)






def specs(tmp_path: Path, s: settings.Settings) -> list[WorkerSpec]:
    return [
        WorkerSpec(name="h-llc0", host="h", llc_index=0, cpus=(0, 1), node=0,
                   basedir=tmp_path / "w0", password_file=s.worker_password_file("h-llc0"),
                   pin_cpus=(0, 1), pin_note=None)
    ]


def test_default_table_is_empty() -> None:
    s = settings.load(settings.DEFAULT_FILE)
    assert s.external == settings.ExternalSettings()


def test_good_table_parses(tmp_path: Path) -> None:
    s = load(tmp_path, GOOD_WEBHOOKS + GOOD_POLLERS)
    ext = s.external
    gh, gl = ext.webhooks
    assert (gh.service, gh.project, gh.repo.name, gh.strict) == (
        "github", "sched-ext/linux", "gh", True)
    # Default secret file: under paths.secrets, named by service and repo.
    assert gh.secret_file == tmp_path / "secrets" / "webhooks" / "github-gh.secret"
    # A relative secret_file is relative to the checkout (the settings root).
    assert gl.secret_file == tmp_path / "tokens" / "gitlab"
    assert gl.strict is False
    (p,) = ext.pollers
    assert p.name == "scx-next"
    assert p.branches == ("for-next", r"for-6\.1[0-9]")
    assert (p.interval, p.profiles) == (300, ("tiny", "preempt"))


def test_relative_poller_url_is_made_absolute(tmp_path: Path) -> None:
    s = load(tmp_path, '[[external.pollers]]\nname = "up"\nurl = "mirrors/up.git"\n'
                       'branches = ["main"]\ninterval = 60\n')
    (p,) = s.external.pollers
    assert p.url == str(tmp_path / "mirrors" / "up.git")
    assert p.profiles == ("tiny",)  # like [[repos]]


HOOK = '[[external.webhooks]]\nrepo = "gh"\nservice = "github"\nproject = "a/b"\n'
POLL = '[[external.pollers]]\nname = "up"\nurl = "/srv/up.git"\nbranches = ["main"]\ninterval = 60\n'


@pytest.mark.parametrize("toml, message", [
    ("[external]\nhooks = []\n",
     "unknown key 'external.hooks'; known keys here: github_api, github_token_file, "
     "gitlab_api, gitlab_token_file, pollers, status_context, webhooks"),
    ("[external.pollers]\nname = \"x\"\n",
     "external.pollers must be an array of tables ([[external.pollers]])"),
    ("[[external.webhooks]]\nservice = \"github\"\nproject = \"a/b\"\n",
     "external.webhooks[0].repo is missing; it must be a string"),
    (HOOK.replace('"gh"', '"nope"'),
     "external.webhooks[0].repo names the unknown repository 'nope'; [[repos]] names: gh, linux"),
    (HOOK.replace('"github"', '"bitbucket"'),
     'external.webhooks[0].service must be "github" or "gitlab", not \'bitbucket\''),
    (HOOK.replace('"a/b"', '"just-a-name"'), "external.webhooks[0].project must be the project path"),
    (HOOK.replace('"a/b"', '"a/b; rm -rf /"'), "external.webhooks[0].project must be the project path"),
    (HOOK + 'strict = "yes"\n', "external.webhooks[0].strict must be true or false, not 'yes'"),
    (HOOK + 'secret = "x"\n',
     "external.webhooks[0].secret is not a known key (repo, service, project, secret_file, strict)"),
    (HOOK + HOOK.replace('"a/b"', '"A/B"'),
     "external.webhooks[1].project 'A/B' has a second github webhook entry"),
    (HOOK + 'secret_file = "s"\n' + HOOK.replace('"a/b"', '"c/d"') + 'secret_file = "s"\n',
     "external.webhooks[1].secret_file"),
    (POLL.replace('branches = ["main"]\n', ""),
     "external.pollers[0].branches is missing; it must be a list of strings"),
    (POLL.replace('["main"]', "[]"), "external.pollers[0].branches must list at least one pattern"),
    (POLL.replace('["main"]', '["(unclosed"]'),
     "external.pollers[0].branches has an invalid regular expression '(unclosed'"),
    (POLL.replace("60", "0"), "external.pollers[0].interval must be an integer from 1 to 604800, not 0"),
    (POLL.replace("60", '"5m"'), "external.pollers[0].interval must be an integer from 1 to 604800"),
    (POLL + 'profiles = ["huge"]\n', "external.pollers[0].profiles names the unknown profile 'huge'"),
    (POLL.replace('"up"', '"gh"'), "external.pollers[0].name 'gh' is already a [[repos]] name"),
    (POLL.replace('"up"', '"bad name"'), "external.pollers[0].name must be letters, digits"),
    (POLL + POLL, "external.pollers[1].name 'up' is used twice"),
    (POLL.replace('"/srv/up.git"', '""'), "external.pollers[0].url must not be empty"),
    (POLL.replace('"/srv/up.git"', '"--upload-pack=evil"'), "external.pollers[0].url must not start with '-'"),
    (POLL + "every = 3\n",
     "external.pollers[0].every is not a known key (name, url, branches, interval, profiles, "
     "service, project)"),
])
def test_errors_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(settings.SettingsError) as exc:
        load(tmp_path, toml)
    text = str(exc.value)
    assert message in text
    assert str(tmp_path / "settings.toml") in text  # and the file


def test_configure_turns_a_bad_table_into_one_config_error(tmp_path: Path) -> None:
    path = write_settings(tmp_path, HOOK.replace('"github"', '"svn"'))
    with pytest.raises(ConfigErrors) as exc:
        builders.load_settings(path, root=tmp_path)
    assert exc.value.errors == [
        f"settings file {tmp_path / 'settings.toml'}: external.webhooks[0].service must be "
        "\"github\" or \"gitlab\", not 'svn'"
    ]


def test_config_without_external_table_adds_nothing(tmp_path: Path) -> None:
    s = load(tmp_path, "")
    c = builders.build_config(s, factory=standin_factory, specs=specs(tmp_path, s))
    assert set(c["www"]["change_hook_dialects"]) == {"base"}
    assert c["change_source"] == []
    assert not (tmp_path / "secrets" / "webhooks").exists()


def test_config_webhooks(tmp_path: Path) -> None:
    s = load(tmp_path, GOOD_WEBHOOKS)
    c = builders.build_config(s, factory=standin_factory, specs=specs(tmp_path, s))
    dialects = c["www"]["change_hook_dialects"]
    assert set(dialects) == {"base", "github", "gitlab"}
    assert dialects["github"]["custom_class"] is webhooks.GitHubHook
    assert dialects["gitlab"]["custom_class"] is webhooks.GitLabHook
    assert [h.project for h in dialects["github"]["hooks"]] == ["sched-ext/linux"]
    # The Basic auth in front of /change_hook stays (it covers every dialect).
    assert len(c["www"]["change_hook_auth"]) == 1
    # Secrets generated on config load, private, and stable across loads.
    gh = tmp_path / "secrets" / "webhooks" / "github-gh.secret"
    gl = tmp_path / "tokens" / "gitlab"
    first = gh.read_text()
    assert len(first.strip()) >= 24 and gl.read_text().strip()
    assert gh.stat().st_mode & 0o777 == 0o600
    builders.build_config(s, factory=standin_factory, specs=specs(tmp_path, s))
    assert gh.read_text() == first


def test_config_pollers(tmp_path: Path) -> None:
    s = load(tmp_path, GOOD_POLLERS)
    c = builders.build_config(s, factory=standin_factory, specs=specs(tmp_path, s))
    (poller,) = c["change_source"]
    assert isinstance(poller, GitPoller)
    url = "https://git.kernel.org/pub/scm/linux/kernel/git/tj/sched_ext.git"
    # Buildbot keeps a change source's constructor arguments for reconfig.
    assert poller._config_args == (url,) and poller.name == "scx-next"
    args = poller._config_kwargs
    assert args["pollAtLaunch"] is True and args["pollInterval"] == 300
    assert args["workdir"] == "gitpoller-scx-next"
    pick = args["branches"]
    assert pick("refs/heads/for-next") and pick("refs/heads/for-6.12")
    assert not pick("refs/heads/for-6x12")  # patterns are regular expressions, whole name
    assert not pick("refs/heads/master") and not pick("refs/tags/for-next")
    assert not pick("refs/heads/for-next;id")  # (would not match anyway) unsafe
    # Builders like a [[repos]] entry's: every profile, fetching from the poller's URL.
    names = {b.name for b in c["builders"]}
    assert {f"scx-next-{p}" for p in s.profiles} <= names
    b = next(b for b in c["builders"] if b.name == "scx-next-preempt")
    assert b.defaultProperties == {"profile": "preempt", "repo": "scx-next"}
    repourls = [st.kwargs.get("value") for st in b.factory.steps if "value" in st.kwargs]
    assert repourls == [url]  # the stand-in factory's standin_repourl step
    # The repo builders keep their own URL.
    lb = next(b for b in c["builders"] if b.name == "linux-tiny")
    assert [st.kwargs["value"] for st in lb.factory.steps if "value" in st.kwargs] == [
        str(tmp_path / "var" / "linux.git")]
    sched = {x.name: x for x in c["schedulers"]}
    push = sched["push-scx-next"]
    assert isinstance(push, AnyBranchScheduler)
    assert sorted(push.builderNames) == ["scx-next-preempt", "scx-next-tiny"]
    force = sched["force"]
    assert isinstance(force, ForceScheduler)
    assert "scx-next-tiny" in force.builderNames and "linux-tiny" in force.builderNames
    [codebase] = force._config_kwargs["codebases"]
    repo_field = next(f for f in codebase.fields if f.name == "repository")
    assert repo_field.choices == [str(tmp_path / "var" / "linux.git"),
                                  "https://github.com/sched-ext/linux.git", url]


def test_poller_builders_with_the_real_kernel_factory(tmp_path: Path) -> None:
    """The clone of a real kernel_build_factory checks out the poller's URL."""
    s = load(tmp_path, GOOD_POLLERS)
    c = builders.build_config(s, specs=specs(tmp_path, s))  # default: kernel_build_factory
    url = "https://git.kernel.org/pub/scm/linux/kernel/git/tj/sched_ext.git"
    by_name = {b.name: b for b in c["builders"]}
    for name, want in (("scx-next-tiny", url), ("gh-tiny", "https://github.com/sched-ext/linux.git")):
        checkout = [st for st in by_name[name].factory.steps if "repourl" in st.kwargs]
        assert [st.kwargs["repourl"] for st in checkout] == [want]
        # Every step is still built from the same classes.
        assert [st.step_class for st in by_name[name].factory.steps] == [
            st.step_class for st in by_name["linux-tiny"].factory.steps]


def test_poller_builder_name_clash_is_a_config_error(tmp_path: Path) -> None:
    # "gh" + profile "tiny-preempt" and poller "gh-tiny" + "preempt" give one name.
    s = load(tmp_path, POLL.replace('"up"', '"gh-tiny"') + 'profiles = ["preempt"]\n')
    with pytest.raises(ConfigErrors) as exc:
        builders.build_config(s, factory=standin_factory, specs=specs(tmp_path, s))
    assert "builder gh-tiny-preempt already exists; rename the poller" in exc.value.errors[0]


def test_checkconfig_with_webhooks_and_pollers(tmp_path: Path) -> None:
    # master.cfg resolves relative paths against the checkout: keep the secret in tmp.
    token = tmp_path / "tokens" / "gitlab"
    hooks = GOOD_WEBHOOKS.replace('"tokens/gitlab"', json.dumps(str(token)))
    proc = run_checkconfig(write_settings(tmp_path, hooks + GOOD_POLLERS), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Config file is good!" in proc.stdout
    assert token.read_text().strip()  # generated by the config load


def test_checkconfig_reports_the_bad_external_key(tmp_path: Path) -> None:
    bad = write_settings(tmp_path, POLL.replace("60", "-5"))
    proc = run_checkconfig(bad, tmp_path)
    assert proc.returncode == 1
    assert "external.pollers[0].interval must be an integer from 1 to 604800, not -5" in proc.stderr
    assert "Traceback" not in proc.stderr
