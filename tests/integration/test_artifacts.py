"""Downloadable kernels on a real master and real workers (tests/support/servicekit.py, real master.cfg).

Every successful build's publish step uploads bzImage, vmlinux, .config and
metadata.json to ``<master>/artifacts/<builder>/<number>/``; the master's own
web server serves them under ``/plugins/wsgi_dashboards/artifacts/``. These
tests fetch them over HTTP and compare bytes with the kernel cache and the
source trees, follow the build page's links, try path traversal, and check
the retention (per-builder count after each publish, age at the sweep).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.client
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import settings as settings_mod
from ktstr_steps.cache import KernelMetadata
from master import artifacts, tryjobs
from tests.support.fakekernel import git, make_fake_kernel
from tests.support.paths import VENV_BIN
from tests.support.servicekit import SUCCESS, ServiceKit, free_port

pytestmark = pytest.mark.integration

FILES = ("bzImage", "vmlinux", ".config", "metadata.json")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(url: str, *, method: str = "GET", auth: tuple[str, str] | None = None,
          ) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, method=method)
    if auth:
        tok = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {tok}")
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def raw_get(kit: ServiceKit, path: str) -> tuple[int, bytes]:
    """GET with ``path`` sent exactly as written (no client-side normalisation of ``..``)."""
    conn = http.client.HTTPConnection("127.0.0.1", kit.web_port, timeout=20)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_builder_build(kit: ServiceKit, builder: str, after: int, timeout: float = 300) -> dict:
    def done() -> dict | None:
        new = [b for b in kit.builds(builder=builder) if b["buildid"] > after and b["complete"]]
        return new[0] if new else None

    return kit.wait_for(done, timeout, f"a finished build of {builder}", interval=0.2)


def last_buildid(kit: ServiceKit) -> int:
    builds = kit.api("builds", order="-buildid", limit=1)["builds"]
    return builds[0]["buildid"] if builds else 0


def publish_step(kit: ServiceKit, buildid: int) -> dict:
    return next(s for s in kit.build_steps(buildid) if s["name"] == "publish")


def the_tree(kit: ServiceKit, builder: str) -> Path:
    trees = list((kit.tree_store / builder).iterdir())
    assert len(trees) == 1, trees
    return trees[0]


@pytest.fixture(scope="module")
def ak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceKit]:
    root = tmp_path_factory.mktemp("artkit")
    try_port = free_port()
    kit = ServiceKit(root, extra_toml=f'\n[try]\nport = {try_port}\nprofiles = ["tiny"]\n')
    kit.try_port = try_port  # type: ignore[attr-defined]
    with kit:
        kit.tree = make_fake_kernel(root / "linux")  # type: ignore[attr-defined]
        kit.push(kit.tree, "main")  # type: ignore[attr-defined]
        build = kit.wait_build("main", finished=True, timeout=300)
        assert build["results"] == SUCCESS
        kit.first_build = build  # type: ignore[attr-defined]
        yield kit


def test_push_build_downloads_are_the_cache_entry_bytes(ak: ServiceKit) -> None:
    build = ak.first_build  # type: ignore[attr-defined]
    props = ak.build_properties(build["buildid"])
    assert props["kernel_outcome"] == "cached"
    base = props["artifacts_url"]
    assert base == f"{ak.web_url.replace('127.0.0.1', 'localhost')}plugins/wsgi_dashboards/" \
        f"artifacts/linux-tiny/{build['number']}/"
    base = base.replace("localhost", "127.0.0.1")  # buildbotURL says localhost; same server
    entry = Path(props["entry_dir"])
    assert entry.parent == ak.cache_dir
    for name in ("bzImage", "vmlinux", "metadata.json"):
        status, body, headers = fetch(base + name)
        assert status == 200, name
        assert sha(body) == sha((entry / name).read_bytes()), name
        assert headers["Content-Length"] == str(len(body))
    # The cache keeps no .config; the download is the tree's, which built this kernel.
    status, config, _ = fetch(base + ".config")
    assert status == 200
    assert config == (the_tree(ak, "linux-tiny") / ".config").read_bytes()
    meta = KernelMetadata.from_json((entry / "metadata.json").read_text())
    assert f"{zlib.crc32(config) & 0xFFFFFFFF:08x}" == meta.config_hash

    status, body, _ = fetch(base + "SHA256SUMS")
    sums = dict(reversed(line.split("  ", 1)) for line in body.decode().splitlines())
    assert sums == {n: sha(fetch(base + n)[1]) for n in FILES}
    manifest = json.loads(fetch(base + "files.json")[1])
    assert manifest["outcome"] == "cached" and manifest["cache_key"] == props["cache_key"]
    assert manifest["vmlinux_from"] == "cache entry" and manifest["missing"] == []
    assert {n: f["sha256"] for n, f in manifest["files"].items() if n in FILES} == sums
    # HEAD answers with the size and no body.
    status, body, headers = fetch(base + "bzImage", method="HEAD")
    assert status == 200 and body == b""
    assert headers["Content-Length"] == str((entry / "bzImage").stat().st_size)


def test_build_page_links_every_file(ak: ServiceKit) -> None:
    build = ak.first_build  # type: ignore[attr-defined]
    step = publish_step(ak, build["buildid"])
    assert step["results"] == SUCCESS
    assert step["state_string"] == "published bzImage, vmlinux, .config, metadata.json"
    urls = {u["name"].split(" (")[0]: u["url"] for u in step["urls"]}
    assert set(urls) == {*FILES, "all files"}
    base = ak.build_properties(build["buildid"])["artifacts_url"]
    for name in FILES:
        assert urls[name] == base + name
        status, body, _ = fetch(urls[name].replace("localhost", "127.0.0.1"))
        assert status == 200 and body
    status, page, _ = fetch(urls["all files"].replace("localhost", "127.0.0.1"))
    assert status == 200
    for name in FILES:
        assert f">{name}<".encode() in page
    # The UI menu page lists the build.
    status, index, _ = fetch(f"{ak.web_url}plugins/wsgi_dashboards/artifacts/index.html")
    assert status == 200 and f"linux-tiny/{build['number']}/".encode() in index


def test_cache_hit_build_publishes_the_same_kernel(ak: ServiceKit) -> None:
    first = ak.build_properties(ak.first_build["buildid"])  # type: ignore[attr-defined]
    after = last_buildid(ak)
    status, body = ak.force("linux-tiny", "main")
    assert status == 200, body
    build = wait_builder_build(ak, "linux-tiny", after)
    props = ak.build_properties(build["buildid"])
    assert props["kernel_outcome"] == "cache-hit"
    base = props["artifacts_url"].replace("localhost", "127.0.0.1")
    assert base.endswith(f"/linux-tiny/{build['number']}/")
    entry = Path(first["entry_dir"])
    for name in ("bzImage", "vmlinux", "metadata.json"):
        assert sha(fetch(base + name)[1]) == sha((entry / name).read_bytes()), name
    # The tree was not reconfigured on the hit; its .config is still this kernel's.
    assert fetch(base + ".config")[0] == 200


def test_try_build_downloads_the_patched_kernel(ak: ServiceKit, tmp_path: Path) -> None:
    tree: Path = ak.tree  # type: ignore[attr-defined]
    main_c = tree / "init/main.c"
    main_c.write_text(main_c.read_text().replace("6.12.0-ktstrfake", "6.12.0-ktstrfake-dl"))
    patch = tmp_path / "dl.diff"
    patch.write_text(git(tree, "diff"))
    git(tree, "checkout", "--", "init/main.c")
    cfg = settings_mod.load(ak.settings_file, root=ak.root).try_
    password = json.loads(cfg.users_file.read_text())["try"]
    argv = tryjobs.try_command(cfg, user="try", password=password, branch="main",
                               profile="tiny", diff=str(patch))
    after = last_buildid(ak)
    proc = subprocess.run([str(VENV_BIN / "buildbot"), *argv[1:]], capture_output=True,
                          text=True, timeout=60, cwd=ak.root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    build = wait_builder_build(ak, "try-tiny", after)
    assert build["results"] == SUCCESS
    props = ak.build_properties(build["buildid"])
    assert props["kernel_outcome"] == "dirty-not-cached"
    base = props["artifacts_url"].replace("localhost", "127.0.0.1")
    try_tree = the_tree(ak, "try-tiny")

    status, image, _ = fetch(base + "bzImage")
    assert status == 200 and image == (try_tree / "arch/x86/boot/bzImage").read_bytes()
    status, vmlinux, _ = fetch(base + "vmlinux")
    assert status == 200 and b"6.12.0-ktstrfake-dl" in vmlinux  # the patched kernel
    assert len(vmlinux) <= (try_tree / "vmlinux").stat().st_size
    status, config, _ = fetch(base + ".config")
    assert status == 200 and config == (try_tree / ".config").read_bytes()
    meta = KernelMetadata.from_json(fetch(base + "metadata.json")[1].decode())
    assert meta.has_vmlinux and meta.vmlinux_stripped
    assert meta.image_name == "bzImage" and meta.arch == "x86_64"
    assert meta.source.to_json()["type"] == "local" and meta.source.to_json()["git_hash"] is None
    assert meta.config_hash == f"{zlib.crc32(config) & 0xFFFFFFFF:08x}"
    manifest = json.loads(fetch(base + "files.json")[1])
    assert manifest["diff_hash"] == props["diff_hash"]
    assert manifest["vmlinux_from"] == "source tree, stripped on the worker"
    # Nothing of the try reached the cache.
    assert [p.name for p in ak.cache_dir.iterdir() if not p.name.startswith(".")] == [
        Path(ak.build_properties(ak.first_build["buildid"])["entry_dir"]).name]  # type: ignore[attr-defined]


TRAVERSALS = (
    "/plugins/wsgi_dashboards/artifacts/../../../../etc/passwd",
    "/plugins/wsgi_dashboards/artifacts/linux-tiny/1/../../../secrets/web-users.json",
    "/plugins/wsgi_dashboards/artifacts/linux-tiny/1/..%2f..%2f..%2fsecrets%2fweb-users.json",
    "/plugins/wsgi_dashboards/artifacts/linux-tiny/1/%2e%2e/%2e%2e/%2e%2e/secrets/web-users.json",
    "/plugins/wsgi_dashboards/artifacts/..%2f..%2fsecrets/1/web-users.json",
    "/plugins/wsgi_dashboards/artifacts/%2e%2e/1/metadata.json",
    "/plugins/wsgi_dashboards/artifacts/linux-tiny/1/%2fetc%2fpasswd",
    "/plugins/wsgi_dashboards/artifacts/linux-tiny/1/.%2e/1/metadata.json",
    "/plugins/wsgi_dashboards/artifacts/linux-tiny/1/ktstr-state.json",
    "/plugins/wsgi_dashboards/artifacts/linux-tiny/-1/bzImage",
    "/plugins/wsgi_dashboards/artifacts/outside/5/metadata.json",
    "/plugins/wsgi_dashboards/artifacts/linux-tiny/1/Image",
)


def test_traversal_is_refused(ak: ServiceKit, tmp_path: Path) -> None:
    secret = (ak.root / "secrets" / "web-users.json").read_bytes()
    art = ak.service.master_dir / "artifacts"
    # Planted escapes: a builder directory and a file that are symlinks to elsewhere.
    outside = tmp_path / "outside"
    (outside / "5").mkdir(parents=True)
    (outside / "5" / "metadata.json").write_bytes(secret)
    (art / "outside").symlink_to(outside)
    (art / "linux-tiny" / "1" / "Image").symlink_to(ak.root / "secrets" / "web-users.json")
    try:
        for path in TRAVERSALS:
            status, body = raw_get(ak, path)
            assert status in (400, 404), (path, status, body[:200])
            assert secret not in body and b"root:x:0:0" not in body, path
    finally:
        (art / "outside").unlink()
        (art / "linux-tiny" / "1" / "Image").unlink()
    # Nothing else is affected: the UI, the API and the real files still answer.
    assert raw_get(ak, "/")[0] == 200
    assert ak.api("builders")["builders"]
    assert raw_get(ak, "/plugins/wsgi_dashboards/artifacts/linux-tiny/1/bzImage")[0] == 200


# -- retention -----------------------------------------------------------------------


def _plant(art: Path, builder: str, number: int, *, age_days: float) -> Path:
    d = art / builder / str(number)
    d.mkdir(parents=True)
    when = dt.datetime.now(dt.UTC) - dt.timedelta(days=age_days)
    (d / "files.json").write_text(json.dumps({"published_at": when.isoformat()}))
    (d / "bzImage").write_bytes(b"old kernel")
    return d


def test_retention_on_a_running_master(tmp_path: Path) -> None:
    kit = ServiceKit(
        tmp_path, extra_toml="\n[try]\nport = 0\n[artifacts]\nmax_builds = 2\nmax_age_days = 30\n"
    )
    art = kit.root / "master" / "artifacts"
    old = _plant(art, "elsewhere", 3, age_days=40)
    young = _plant(art, "elsewhere", 4, age_days=2)
    partial = art / "elsewhere" / ".partial-9-1"
    partial.mkdir()
    os.utime(partial, (time.time() - 3 * 86400,) * 2)
    with kit:
        # The sweep at start removed what is past max_age_days and stale partial uploads.
        kit.wait_for(lambda: not old.exists(), 30, "the startup sweep")
        assert young.is_dir() and not partial.exists()
        assert not any(n.startswith("try-") for n in
                       (b["name"] for b in kit.api("builders")["builders"]))  # port = 0

        tree = make_fake_kernel(tmp_path / "linux")
        numbers = []
        for i in range(3):
            if i:
                kit.commit(tree, {"README": f"change {i}\n"}, f"change {i}")
            after = last_buildid(kit)
            kit.push(tree, "main")
            build = wait_builder_build(kit, "linux-tiny", after)
            assert build["results"] == SUCCESS
            numbers.append(build["number"])
        # After each publish the builder keeps its max_builds newest builds.
        assert sorted(int(p.name) for p in (art / "linux-tiny").iterdir()) == numbers[-2:]
        url = f"{kit.web_url}plugins/wsgi_dashboards/artifacts/linux-tiny/"
        assert fetch(f"{url}{numbers[0]}/bzImage")[0] == 404
        assert fetch(f"{url}{numbers[-1]}/bzImage")[0] == 200
        assert young.is_dir()  # another builder's count is its own


def test_prune_builder_limits(tmp_path: Path) -> None:
    now = time.time()
    b = tmp_path / "linux-tiny"
    for n, age in ((1, 50), (2, 10), (3, 5), (10, 1)):
        _plant(tmp_path, "linux-tiny", n, age_days=age)
    (b / "notes").mkdir()  # not a build directory: never touched
    removed = artifacts.prune_builder(b, max_builds=2, max_age_days=0, now=now)
    assert sorted(p.name for p in removed) == ["1", "2"]
    assert sorted(p.name for p in b.iterdir()) == ["10", "3", "notes"]
    removed = artifacts.prune_builder(b, max_builds=0, max_age_days=3, now=now)
    assert [p.name for p in removed] == ["3"]
    # Without files.json the directory's mtime is the age.
    d = b / "20"
    d.mkdir()
    os.utime(d, (now - 10 * 86400,) * 2)
    assert artifacts.prune_builder(b, max_builds=0, max_age_days=3, now=now) == [d]
    assert artifacts.sweep(tmp_path / "missing", max_builds=1, max_age_days=1) == []


def test_settings_errors_name_the_key(tmp_path: Path) -> None:
    base = settings_mod.load(settings_mod.DEFAULT_FILE, root=tmp_path)
    for table, want in (({"max_builds": -1}, "artifacts.max_builds"),
                        ({"max_age_days": "30"}, "artifacts.max_age_days"),
                        ({"sweep_minutes": 0}, "artifacts.sweep_minutes"),
                        ({"colour": "red"}, "artifacts.colour")):
        with pytest.raises(settings_mod.SettingsError, match=want.replace(".", r"\.")):
            _with_table(base, "artifacts", table)
    cfg = base.artifacts
    assert cfg.root == base.master.basedir / "artifacts"
    assert (cfg.max_age_days, cfg.max_builds) == (30, 20)


def _with_table(s: settings_mod.Settings, name: str, table: dict) -> settings_mod.Settings:
    """``s`` loaded again with these keys of ``[name]`` in a settings file of its own."""
    path = s.root / f"{name}-settings.toml"
    path.write_text(f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    return settings_mod.load(path, root=s.root)


def test_anonymous_read_off_asks_for_a_login(tmp_path: Path) -> None:
    """With web.anonymous_read = false the downloads need a web user (HTTP Basic)."""
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"dev": "s3cret"}))
    _plant(tmp_path / "art", "linux-tiny", 1, age_days=0)
    client = artifacts.make_app(tmp_path / "art", users_file=users).test_client()
    path = "/linux-tiny/1/bzImage"
    assert client.get(path).status_code == 401
    bad = base64.b64encode(b"dev:wrong").decode()
    assert client.get(path, headers={"Authorization": f"Basic {bad}"}).status_code == 401
    good = base64.b64encode(b"dev:s3cret").decode()
    resp = client.get(path, headers={"Authorization": f"Basic {good}"})
    assert resp.status_code == 200 and resp.data == b"old kernel"
    open_client = artifacts.make_app(tmp_path / "art").test_client()
    assert open_client.get(path).data == b"old kernel"
    assert open_client.get("/linux-tiny/1/files.json").status_code == 200
    assert open_client.get("/linux-tiny/1/notes.txt").status_code == 404  # not a published name
