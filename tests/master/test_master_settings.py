"""Settings: which file is read, merging over the default, and validation errors naming the key."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import settings as S
from ktstr_steps.refnames import is_safe_branch


@pytest.fixture(autouse=True)
def no_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(S.ENV_VAR, raising=False)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "settings.toml"
    p.write_text(text)
    return p


def test_default_file_is_the_embedded_service(tmp_path: Path) -> None:
    s = S.load(S.DEFAULT_FILE, root=tmp_path)
    assert s.source == S.DEFAULT_FILE
    assert s.web.port == 8010 and s.web.bind == "127.0.0.1" and s.web.anonymous_read
    assert s.web_url == "http://localhost:8010/"
    assert s.master.pb_port == 9989
    assert s.master.basedir == tmp_path / "var/master"
    assert s.databases.buildbot == f"sqlite:///{tmp_path}/var/master/state.sqlite"
    assert s.databases.records == f"sqlite:///{tmp_path}/var/records.sqlite"
    assert s.paths.tree_store == tmp_path / "var/trees"
    # kernel_cache "" = ktstr's own cache (conftest sets KTSTR_CACHE_DIR per test)
    assert s.paths.kernel_cache == Path(os.environ["KTSTR_CACHE_DIR"])
    [repo] = s.repos
    assert repo.name == "linux" and repo.hosted
    assert repo.path == tmp_path / "var/linux.git" and repo.url == str(repo.path)
    assert repo.profiles == ("tiny",)
    assert {"default", "tiny", "preempt", "tiny-preempt"} <= set(s.profiles)
    assert s.workers.mode == "auto"
    assert s.change_hook_url == "http://127.0.0.1:8010/change_hook/base"


def test_which_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert S.settings_path(tmp_path) == S.DEFAULT_FILE
    local = tmp_path / "var" / "settings.toml"
    local.parent.mkdir()
    local.write_text("[web]\nport = 8111\n")
    assert S.settings_path(tmp_path) == local
    assert S.load(root=tmp_path).web.port == 8111
    env_file = write(tmp_path, "[web]\nport = 8222\n")
    monkeypatch.setenv(S.ENV_VAR, str(env_file))
    assert S.settings_path(tmp_path) == env_file
    assert S.load(root=tmp_path).web.port == 8222


def test_user_file_merges_over_default(tmp_path: Path) -> None:
    s = S.load(write(tmp_path, """
[web]
port = 9000
url = "http://ci.example.com:9000"
[[repos]]
name = "sched"
url = "https://git.example.com/sched.git"
branches = ["sched_ext/.*", "for-next"]
profiles = ["tiny", "preempt"]
"""), root=tmp_path)
    assert s.web.port == 9000 and s.web.bind == "127.0.0.1"  # untouched keys keep defaults
    assert s.web_url == "http://ci.example.com:9000/"
    [repo] = s.repos  # arrays replace
    assert repo.url == "https://git.example.com/sched.git" and repo.path is None
    assert repo.branch_wanted("sched_ext/foo") and repo.branch_wanted("for-next")
    assert not repo.branch_wanted("for-next-2")  # whole-name match
    assert not repo.branch_wanted("sched_ext/a;b")  # unsafe names never build


def test_listed_workers(tmp_path: Path) -> None:
    s = S.load(write(tmp_path, """
[workers]
mode = "list"
[[workers.list]]
name = "big-llc0"
host = "big"
llc_index = 0
cpus = "0-7"
"""), root=tmp_path)
    assert s.workers.listed[0].cpus == tuple(range(8))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[web]\nprot = 1\n", "unknown key 'web.prot'"),
        ("[wbe]\nport = 1\n", "unknown key 'wbe'"),
        ('[web]\nport = "8010"\n', "web.port must be an integer from 1 to 65535"),
        ("[web]\nport = true\n", "web.port must be an integer"),
        ("[web]\nport = 70000\n", "web.port must be an integer from 1 to 65535, not 70000"),
        ("[web]\nport = 9989\n", "web.port must differ from master.pb_port"),
        ('[web]\nurl = "ftp://x"\n', "web.url must start with http://"),
        ('[web]\nadmins = "admin"\n', "web.admins must be a list of strings"),
        ("web = 3\n", "web must be a table"),
        ('[master]\nhost = "a b"\n', "master.host must be letters, digits and '-'"),
        ('[hook]\ntimeout = 0\n', "hook.timeout must be between 0 and 300"),
        ('[databases]\nrecords = "records.sqlite"\n', "databases.records must be a database URL"),
        ('[workers]\nmode = "magic"\n', 'workers.mode must be "auto" or "list"'),
        ('[workers]\nmode = "list"\n', "workers.list must name at least one worker"),
        ('[[workers.list]]\nname = "w"\nhost = "h"\nllc_index = 0\ncpus = "3-1"\n',
         "workers.list[0].cpus is not a CPU list"),
        ("repos = []\n", "[[repos]] must list at least one repository"),
        ('[[repos]]\nname = "linux"\nurl = "x.git"\nprofiles = ["huge"]\n',
         "repos[0].profiles names the unknown profile 'huge'"),
        ('[[repos]]\nname = "linux"\nurl = "x.git"\nbranches = ["("]\n',
         "repos[0].branches has an invalid regular expression '('"),
        ('[[repos]]\nname = "a"\nurl = "x.git"\n[[repos]]\nname = "a"\nurl = "y.git"\n',
         "repos[1].name 'a' is used twice"),
        ('[[repos]]\nname = "a/b"\nurl = "x.git"\n', "repos[0].name must be letters"),
        ('[[repos]]\nname = "a"\nurl = "https://h/x.git"\nhosted = true\n',
         "repos[0].hosted can only be true for a local path"),
        ('[[repos]]\nname = "a"\nurl = "x.git"\nbranch = ["x"]\n', "repos[0].branch is not a known key"),
        ("[web\n", "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(S.SettingsError) as exc:
        S.load(path, root=tmp_path)
    assert needle in str(exc.value)
    assert str(path) in str(exc.value)


def test_missing_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(S.ENV_VAR, str(tmp_path / "nope.toml"))
    with pytest.raises(S.SettingsError, match="nope.toml does not exist"):
        S.load(root=tmp_path)


def test_unknown_profile_lists_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, '[[repos]]\nname = "l"\nurl = "l.git"\nprofiles = ["tiy"]\n')
    with pytest.raises(S.SettingsError, match=r"known profiles .*tiny"):
        S.load(path, root=tmp_path)


@pytest.mark.parametrize(
    ("name", "ok"),
    [("main", True), ("feature/x-1.2_3", True), ("a..b", False), ("a;b", False),
     ("$(id)", False), ("-rf", False), ("/abs", False), ("x.lock", False), ("a b", False),
     (".hidden", False), ("a//b", False), ("ü", False), ("", False), ("HEAD", False),
     ("main\n", False), ("x/.y", False), ("x.lock/y", False), ("a" * 250, True),
     ("a" * 251, False), ("dir/HEAD", True)],
)
def test_safe_branch_names(name: str, ok: bool) -> None:
    assert is_safe_branch(name) is ok


def test_secrets_generated_private_and_stable(tmp_path: Path) -> None:
    p = tmp_path / "secrets" / "x.pass"
    first = S.ensure_secret(p)
    assert len(first) >= 24
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE(p.parent.stat().st_mode) == 0o700
    assert S.ensure_secret(p) == first == S.read_secret(p)
    assert S.read_secret(tmp_path / "missing") is None


def test_users_file(tmp_path: Path) -> None:
    p = tmp_path / "users.json"
    users = S.ensure_users(p, ("admin",))
    assert set(users) == {"admin"} and stat.S_IMODE(p.stat().st_mode) == 0o600
    p.write_text(json.dumps({"admin": users["admin"], "dev": "pw"}))
    assert S.ensure_users(p, ("admin",)) == {"admin": users["admin"], "dev": "pw"}
    p.write_text('["admin"]')
    with pytest.raises(S.SettingsError, match="must be a JSON object"):
        S.read_users(p)
    assert S.read_users(tmp_path / "none.json") == {}
