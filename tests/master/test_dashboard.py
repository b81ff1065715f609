"""The wsgi dashboard, through Flask's test client, against real SQLite rows."""

from __future__ import annotations

import datetime as dt
import json
import re
from html import unescape

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

BASE = "http://localhost/plugins/ktstr/dash/"  # where the ktstr www plugin mounts the app
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
    html = get(client, "/index.html?fragment=1")
    assert not html.lstrip().startswith("<!doctype")  # injected into Buildbot's React shell
    assert 'href="/#/ktstr/branch?name=main"' in html  # the shell's route: stays in the app
    # The build page link in 4.3's route form.
    assert 'href="/#/builders/3/builds/7"' in html
    assert 'class="badge outcome-cached"' in html and 'class="badge outcome-failed"' in html
    assert f'href="/#/ktstr/matrix?id={filled}"' in html
    assert len(re.findall(r'<tr class="build"', html)) == 4


def test_user_text_is_escaped(client, filled):
    html = get(client, "/index.html")
    assert "<script>alert(1)</script>" not in html
    assert "make-failed: &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "#/ktstr/branch?name=feat/%3Cx%3E%26y" in html


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
    rows = re.findall(r'<tr class="entry" data-key="([^"]+)">(.*?)</tr>', html, re.S)
    # The failed build stored nothing; newest use first.
    assert [k for k, _ in rows] == ["tarball-6.12.3-x86_64-kcaaaa", "local-0123456-x86_64-kcaaaa"]
    local = dict(rows)["local-0123456-x86_64-kcaaaa"]
    assert "<code>0123456789ab</code>" in local and "6.12.3" in local
    assert 'class="buildlink" href="/#/builders/3/builds/7"' in local  # built by
    assert 'class="lastlink" href="/#/builders/3/builds/7"' in local  # last used
    hit = dict(rows)["tarball-6.12.3-x86_64-kcaaaa"]
    assert "not built by this CI" in hit  # only ever a cache hit here
    assert "=" not in re.sub(r"<[^>]*>", "", local)  # no key=value dumps
    assert "cannot list the kernel cache at its root" in html and "HOME is set to the empty" in html


def _entry(root, key: str, **meta):
    from ktstr_steps.cache import KernelMetadata, KernelSource

    entry = root / key
    entry.mkdir(parents=True)
    (entry / "bzImage").write_bytes(b"k" * 2048)
    fields = {"source": KernelSource.tarball(), "arch": "x86_64", "image_name": "bzImage",
              "built_at": "2026-01-01T00:00:00Z", **meta}  # fmt: skip
    (entry / "metadata.json").write_text(KernelMetadata(**fields).dumps())
    return entry


def live_rows(html: str) -> list[list[str]]:
    """The live listing's rows as cell texts."""
    table = html.split('<table class="live">', 1)[1].split("</table>", 1)[0]
    return [
        [re.sub(r"<[^>]*>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
        for r in re.findall(r'<tr class="live-entry">(.*?)</tr>', table, re.S)
    ]


def test_cache_page_live_listing(client, filled, monkeypatch, tmp_path):
    _entry(tmp_path / "kc", "6.14.2-tarball-x86_64-kcbbbb", version="6.14.2")
    monkeypatch.setenv("KTSTR_CACHE_DIR", str(tmp_path / "kc"))
    html = get(client, "/cache.html")
    assert live_rows(html) == [[
        "6.14.2-tarball-x86_64-kcbbbb", "6.14.2", "tarball", "x86_64", "2026-01-01T00:00:00Z",
        "—", "bzImage 2.00 KiB", "no",
    ]]  # fmt: skip
    assert f"1 entries in {tmp_path / 'kc'}" in html


def test_cache_page_survives_a_failing_listing(client, filled, monkeypatch):
    def boom(root):
        raise OSError("permission denied")

    monkeypatch.setattr(cache, "list_entries", boom)
    html = get(client, "/cache.html")
    assert "cannot list the kernel cache" in html and "permission denied" in html
    assert "local-0123456-x86_64-kcaaaa" in html


def chart_specs(html: str) -> dict[str, dict]:
    """Every chart on a page by name: its Chart.js spec and its point links."""
    out = {}
    for name, spec, links in re.findall(
        r'<canvas data-chart-name="([^"]+)" data-chart="([^"]+)" data-links="([^"]+)" role="img"'
        r' aria-label="[^"]+"', html
    ):
        out[name] = {"spec": json.loads(unescape(spec)), "links": json.loads(unescape(links))}
    return out


def test_trends_plot_every_build_per_profile(client, url):
    eng = db.make_engine(url)
    now = dt.datetime.now(dt.UTC)
    for i, (branch, profile) in enumerate([("a", "tiny"), ("b", "tiny"), ("a", "preempt")]):
        queries.insert_build(eng, row(buildid=i + 1, builderid=2, build_number=i + 1,
                                      branch=branch, profile=profile, make_warnings=i,
                                      phases={"make": 10.0 + i, "configure": 1.0},
                                      started_at=now - dt.timedelta(hours=3 - i)))  # fmt: skip
    queries.insert_build(eng, row(buildid=9, profile="tiny", started_at=now - dt.timedelta(days=9)))
    eng.dispose()
    html = get(client, "/trends.html?days=3")
    charts = chart_specs(html)
    assert set(charts) == {f"profile-{i}-{k}" for i in (1, 2)
                           for k in ("phases", "warnings", "sizes")}  # fmt: skip
    tiny = charts["profile-2-phases"]  # profiles sorted: preempt, tiny
    assert tiny["spec"]["data"]["labels"] == ["a #1 0123456", "b #2 0123456"]  # oldest first
    make = next(d for d in tiny["spec"]["data"]["datasets"] if d["label"] == "make")
    assert make["data"] == [10.0, 11.0] and make["stack"] == "phases"
    assert tiny["links"] == ["/#/builders/2/builds/1", "/#/builders/2/builds/2"]
    sizes = charts["profile-2-sizes"]["spec"]["data"]["datasets"]
    assert [d["data"] for d in sizes] == [[None, None]] * 3  # old rows: gaps, not zeros
    warn = charts["profile-1-warnings"]["spec"]["data"]["datasets"][0]
    assert warn["data"] == [2]
    assert 'data-profile="tiny">Profile <code>tiny</code> — 2 builds' in html
    assert 'aria-label="bzImage, vmlinux, vmlinux (stripped) over 2 builds"' in html


def test_missing_db_is_a_message_not_a_500(tmp_path):
    app = dashboard.create_app(f"sqlite:///{tmp_path / 'none.sqlite'}")
    html = get(app.test_client(), "/index.html")
    assert "Kernel build records unavailable" in html and "no records database at" in html
    assert not (tmp_path / "none.sqlite").exists()


def test_plugin_entry_for_master_cfg(url):
    cfg = dashboard.plugin_entry(url)
    # Sent to every browser with the UI's configuration: no database URL in it.
    assert set(cfg) == {"app"}
    rules = {r.rule for r in cfg["app"].url_map.iter_rules()}
    for page in ("index", "branch", "trends", "cache", "matrix"):
        assert {f"/{page}.html", f"/{page}.json"} <= rules
    assert "no builds recorded yet" in get(cfg["app"].test_client(), "/index.html")


class TestMountedLikeBuildbot(trial.TestCase):
    """Served by twisted.web's WSGIResource at Buildbot's mount point, over loopback on the
    real reactor: links must carry the mount path the way buildbot_wsgi_dashboards sets it."""

    @pytest.fixture(autouse=True)
    def _rows(self, url, filled):
        self.url = url

    async def test_links_carry_the_mount_path(self):
        app = dashboard.plugin_entry(self.url)["app"]
        root, plugins, ktstr = Resource(), Resource(), Resource()
        root.putChild(b"plugins", plugins)
        plugins.putChild(b"ktstr", ktstr)
        ktstr.putChild(b"dash", WSGIResource(reactor, reactor.getThreadPool(), app))
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = f"http://127.0.0.1:{port.getHost().port}/plugins/ktstr/dash"
        resp = await treq.get(f"{base}/index.html", persistent=False)
        self.assertEqual(resp.code, 200)
        html = await resp.text()
        self.assertIn('href="/#/ktstr/branch?name=main"', html)
        self.assertIn('href="/#/builders/3/builds/7"', html)
        resp = await treq.get(f"{base}/branch.html?name=main", persistent=False)
        self.assertEqual(resp.code, 200)
        self.assertIn('<td class="num phase-make">5m42s</td>', await resp.text())


def test_cache_page_with_the_real_cache_module(client, filled, isolated_env):
    from ktstr_steps import cache as kcache

    _entry(isolated_env, "local-feed123-x86_64-kcbbbbbbbb",
           source=kcache.KernelSource.git("feed123", "main"), version="6.13.1",
           config_hash="cfgcfgcf", built_at="2025-06-01T12:00:00Z")  # fmt: skip
    (isolated_env / "broken-entry").mkdir()  # no metadata.json: listed as corrupt
    html = get(client, "/cache.html")
    assert f"2 entries in {isolated_env}" in html
    good, broken = live_rows(html)
    assert good == ["local-feed123-x86_64-kcbbbbbbbb", "6.13.1", "git feed123 main", "x86_64",
                    "2025-06-01T12:00:00Z", "cfgcfgcf", "bzImage 2.00 KiB", "no"]  # fmt: skip
    assert broken[0] == "broken-entry" and broken[1].startswith("corrupt: ")
