"""The wsgi dashboard, through Flask's test client, against real SQLite rows."""

from __future__ import annotations

import datetime as dt
import re

import pytest
import treq
from twisted.internet import reactor
from twisted.trial import unittest as trial
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.wsgi import WSGIResource

from ktstr_steps import cache
from master import dashboard
from master.records import db, queries

BASE = "http://localhost/plugins/wsgi_dashboards/ktstr/"  # where Buildbot mounts the app
T0 = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)


def row(**kw):
    r = {
        "builder": "push",
        "branch": "main",
        "revision": "0123456789abcdef",
        "worker": "host-llc0",
        "llc_cpus": "0-1",
        "make_jobs": 2,
        "kernel_outcome": "cached",
        "result": "success",
        "started_at": T0,
        "finished_at": T0 + dt.timedelta(minutes=6, seconds=5),
    }
    r.update(kw)
    return r


@pytest.fixture
def url(tmp_path) -> str:
    u = f"sqlite:///{tmp_path / 'records.sqlite'}"
    db.upgrade(u)
    return u


@pytest.fixture
def filled(url):
    eng = db.make_engine(url)
    queries.insert_build(
        eng,
        row(buildid=11, builderid=3, build_number=7, cache_key="local-0123456-x86_64-kcaaaa",
            config_hash="cfg12345", kconfig_hash="kc012345", extra_kconfig_hash="ex012345",
            kernel_version="6.12.3", entry_dir="/cache/local-0123456-x86_64-kcaaaa",
            phases={"configure": 1.5, "make": 342.25, "store": 0.5}),
    )  # fmt: skip
    queries.insert_build(
        eng,
        row(buildid=12, branch="feat/<x>&y", kernel_outcome="failed", result="failure",
            error="make-failed: <script>alert(1)</script>", started_at=T0 + dt.timedelta(hours=1)),
    )  # fmt: skip
    run = queries.start_matrix_run(
        eng, versions=["6.12.3", "6.6.60"], profiles=["tiny", "preempt"], spec="6.6..6.12"
    )
    queries.insert_build(
        eng,
        row(buildid=20, builderid=5, build_number=1, branch=None, kernel_version="6.12.3",
            profile="tiny", kernel_outcome="cache-hit", matrix_run_id=run,
            cache_key="tarball-6.12.3-x86_64-kcaaaa"),
    )  # fmt: skip
    queries.insert_build(
        eng,
        row(buildid=21, builderid=5, build_number=2, branch=None, kernel_version="6.6.60",
            profile="preempt", kernel_outcome="failed", result="failure", matrix_run_id=run,
            error="configure-failed: no such symbol"),
    )  # fmt: skip
    queries.finish_matrix_run(eng, run)
    eng.dispose()
    return run


@pytest.fixture
def client(url):
    return dashboard.create_app(url).test_client()


def get(client, path: str, status: int = 200) -> str:
    resp = client.get(path, base_url=BASE)
    assert resp.status_code == status, resp.data[:500]
    return resp.get_data(as_text=True)


def test_index_is_a_fragment_with_branches_recent_and_runs(client, filled):
    html = get(client, "/index.html")
    assert not html.lstrip().startswith("<!doctype")  # injected into Buildbot's React shell
    assert 'href="/plugins/wsgi_dashboards/ktstr/branch.html?name=main"' in html
    # The build page link in 4.3's route form.
    assert 'href="/#/builders/3/builds/7"' in html
    assert 'class="badge outcome-cached"' in html and 'class="badge outcome-failed"' in html
    assert f'href="/plugins/wsgi_dashboards/ktstr/matrix.html?id={filled}"' in html
    assert len(re.findall(r'<tr class="build"', html)) == 4


def test_user_text_is_escaped(client, filled):
    html = get(client, "/index.html")
    assert "<script>alert(1)</script>" not in html
    assert "make-failed: &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "branch.html?name=feat/%3Cx%3E%26y" in html


def test_branch_history_shows_phases(client, filled):
    html = get(client, "/branch.html?name=main")
    assert html.lstrip().startswith("<!doctype html>")
    assert "<th>make</th>" in html and "<th>compile_commands</th>" in html
    assert '<td class="num phase-make">5m42s</td>' in html
    assert '<td class="num phase-configure">1.5s</td>' in html
    assert "6m05s" in html  # the whole build
    # Links from a standalone page go back to Buildbot's root, not the plugin path.
    assert 'href="/#/builders/3/builds/7"' in html
    assert 'href="/#/ktstr"' in html
    assert "feat/" not in html  # only this branch's builds


def test_branch_needs_a_name(client, filled):
    get(client, "/branch.html", status=400)


def test_cache_page_lists_keys_and_identity(client, filled, monkeypatch):
    # No kernel cache root can be resolved (ktstr refuses an empty HOME): the records
    # half of the page still renders, with a note instead of the live listing.
    monkeypatch.delenv("KTSTR_CACHE_DIR")
    monkeypatch.setenv("HOME", "")
    html = get(client, "/cache.html")
    for text in ("local-0123456-x86_64-kcaaaa", "cfg12345", "kc012345", "ex012345", "6.12.3",
                 "/cache/local-0123456-x86_64-kcaaaa", "tarball-6.12.3-x86_64-kcaaaa"):  # fmt: skip
        assert text in html
    assert "cannot list the kernel cache at its root" in html and "HOME is set to the empty" in html
    assert len(re.findall(r'<tr class="entry"', html)) == 2  # the failed build stored nothing


def test_cache_page_live_listing(client, filled, monkeypatch, tmp_path):
    calls = []

    def list_entries(root):
        calls.append(root)
        return [{"key": "local-feed123-x86_64-kcbbbb", "metadata": {"version": "6.13.1",
                                                                     "source": {"type": "git"}}}]  # fmt: skip

    monkeypatch.setattr(cache, "list_entries", list_entries)
    monkeypatch.setenv("KTSTR_CACHE_DIR", str(tmp_path / "kc"))
    html = get(client, "/cache.html")
    assert calls == [tmp_path / "kc"]
    assert "local-feed123-x86_64-kcbbbb" in html and "version=<code>6.13.1</code>" in html
    assert f"1 entries in {tmp_path / 'kc'}" in html


def test_cache_page_lists_real_entries(client, filled, isolated_env):
    from ktstr_steps.cache import KernelMetadata, KernelSource

    entry = isolated_env / "6.14.2-tarball-x86_64-kcbbbb"
    entry.mkdir(parents=True)
    (entry / "bzImage").write_bytes(b"kernel")
    meta = KernelMetadata(source=KernelSource.tarball(), arch="x86_64", image_name="bzImage",
                          built_at="2026-01-01T00:00:00Z", version="6.14.2")
    (entry / "metadata.json").write_text(meta.dumps())
    html = get(client, "/cache.html")
    assert "6.14.2-tarball-x86_64-kcbbbb" in html and "version=<code>6.14.2</code>" in html
    assert f"1 entries in {isolated_env}" in html


def test_cache_page_survives_a_failing_listing(client, filled, monkeypatch):
    def boom(root):
        raise OSError("permission denied")

    monkeypatch.setattr(cache, "list_entries", boom)
    html = get(client, "/cache.html")
    assert "cannot list the kernel cache" in html and "permission denied" in html
    assert "local-0123456-x86_64-kcaaaa" in html


def test_trends_counts_per_day(client, url):
    eng = db.make_engine(url)
    now = dt.datetime.now(dt.UTC).replace(hour=12)
    for i, o in enumerate(["cached", "cached", "failed"]):
        queries.insert_build(eng, row(buildid=i + 1, kernel_outcome=o, started_at=now))
    queries.insert_build(eng, row(buildid=9, started_at=now - dt.timedelta(days=2)))
    eng.dispose()
    html = get(client, "/trends.html?days=3")
    days = re.findall(
        r'<tr class="day" data-day="([0-9-]+)"><td>[0-9-]+</td><td class="num">(\d+)', html
    )
    assert days == [
        ((now - dt.timedelta(days=2)).date().isoformat(), "1"),
        ((now - dt.timedelta(days=1)).date().isoformat(), "0"),
        (now.date().isoformat(), "3"),
    ]
    assert 'title="cached: 2"' in html and 'title="failed: 1"' in html


def test_matrix_grid(client, filled):
    html = get(client, f"/matrix.html?id={filled}")
    assert "4 cells: 0 built, 1 cache hits, 1 failed." in html
    found = re.findall(r'data-version="([^"]+)" data-profile="([^"]+)">(.*?)</td>', html, re.S)
    cells = {(v, p): body for v, p, body in found}
    assert set(cells) == {(v, p) for v in ("6.12.3", "6.6.60") for p in ("tiny", "preempt")}
    assert (
        "cache-hit" in cells[("6.12.3", "tiny")]
        and "/#/builders/5/builds/1" in cells[("6.12.3", "tiny")]
    )
    assert "configure-failed" in cells[("6.6.60", "preempt")]
    assert "not recorded" in cells[("6.6.60", "tiny")]


def test_matrix_list_and_missing_run(client, filled):
    html = get(client, "/matrix.html")
    assert "6.6..6.12" in html and "6.12.3, 6.6.60" in html
    get(client, f"/matrix.html?id={filled + 100}", status=404)


def test_buildid_only_rows_resolve_through_the_data_api(url):
    eng = db.make_engine(url)
    queries.insert_build(eng, row(buildid=77))
    queries.insert_build(eng, row(buildid=78, started_at=T0 - dt.timedelta(hours=1)))
    eng.dispose()
    app = dashboard.create_app(url)

    class Api:  # what buildbot_wsgi_dashboards attaches as app.buildbot_api
        def dataGet(self, path):
            if path == ("builds", 77):
                return {"buildid": 77, "builderid": 4, "number": 19}
            return None

    app.buildbot_api = Api()
    html = get(app.test_client(), "/index.html")
    assert 'href="/#/builders/4/builds/19"' in html
    assert 'href="/api/v2/builds/78"' in html  # unknown to Buildbot: the REST record


def test_missing_db_is_a_message_not_a_500(tmp_path):
    app = dashboard.create_app(f"sqlite:///{tmp_path / 'none.sqlite'}")
    html = get(app.test_client(), "/index.html")
    assert "Kernel build records unavailable" in html and "no records database at" in html
    assert not (tmp_path / "none.sqlite").exists()


def test_dashboard_config_for_master_cfg(url):
    cfg = dashboard.dashboard_config(url)
    assert {k: cfg[k] for k in ("name", "caption", "order", "icon")} == {
        "name": "ktstr", "caption": "Kernel builds", "order": 5, "icon": "FaMicrochip",
    }  # fmt: skip
    assert "/index.html" in {r.rule for r in cfg["app"].url_map.iter_rules()}
    assert "no builds recorded yet" in get(cfg["app"].test_client(), "/index.html")


class TestMountedLikeBuildbot(trial.TestCase):
    """Served by twisted.web's WSGIResource at Buildbot's mount point, over loopback on the
    real reactor: links must carry the mount path the way buildbot_wsgi_dashboards sets it."""

    @pytest.fixture(autouse=True)
    def _rows(self, url, filled):
        self.url = url

    async def test_links_carry_the_mount_path(self):
        app = dashboard.dashboard_config(self.url)["app"]
        root, plugins, wsgi = Resource(), Resource(), Resource()
        root.putChild(b"plugins", plugins)
        plugins.putChild(b"wsgi_dashboards", wsgi)
        wsgi.putChild(b"ktstr", WSGIResource(reactor, reactor.getThreadPool(), app))
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = f"http://127.0.0.1:{port.getHost().port}/plugins/wsgi_dashboards/ktstr"
        resp = await treq.get(f"{base}/index.html", persistent=False)
        self.assertEqual(resp.code, 200)
        html = await resp.text()
        self.assertIn('href="/plugins/wsgi_dashboards/ktstr/branch.html?name=main"', html)
        self.assertIn('href="/#/builders/3/builds/7"', html)
        resp = await treq.get(f"{base}/branch.html?name=main", persistent=False)
        self.assertEqual(resp.code, 200)
        self.assertIn('<td class="num phase-make">5m42s</td>', await resp.text())


def test_cache_page_with_the_real_cache_module(client, filled, isolated_env):
    from ktstr_steps import cache as kcache

    good = isolated_env / "local-feed123-x86_64-kcbbbbbbbb"
    good.mkdir(parents=True)
    (good / "bzImage").write_bytes(b"kernel")
    meta = kcache.KernelMetadata(
        source=kcache.KernelSource.git("feed123", "main"),
        arch="x86_64",
        image_name="bzImage",
        built_at="2025-06-01T12:00:00Z",
        version="6.13.1",
        config_hash="cfgcfgcf",
    )
    (good / "metadata.json").write_text(meta.dumps())
    (isolated_env / "broken-entry").mkdir()  # no metadata.json: listed as corrupt
    html = get(client, "/cache.html")
    assert f"2 entries in {isolated_env}" in html
    assert "local-feed123-x86_64-kcbbbbbbbb" in html and "version=<code>6.13.1</code>" in html
    assert "config_hash=<code>cfgcfgcf</code>" in html
    assert "source=<code>git feed123 main</code>" in html
    assert "broken-entry" in html and "reason=" in html
