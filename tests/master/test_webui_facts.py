"""The pages' per-build findings (why it rebuilt, what changed, what got worse) and their JSON,
through Flask's test client against real SQLite rows; old rows show "—"."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from sqlalchemy import inspect, text

from master import dashboard
from master.records import db, queries
from master.webui import facts

BASE = "http://localhost/plugins/ktstr/dash/"
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
EXPLANATION = "nearest cached entry `local-aaaaaaa-x86_64-kc1` differs in: gcc 12.2.0 → 13.1.0"


def row(**kw):
    r = {"builder": "push", "branch": "main", "revision": "0123456789abcdef", "profile": "tiny",
         "kernel_outcome": "cached", "result": "success", "started_at": T0,
         "finished_at": T0 + dt.timedelta(minutes=5), "builderid": 3}  # fmt: skip
    r.update(kw)
    return r


@pytest.fixture
def url(tmp_path) -> str:
    u = f"sqlite:///{tmp_path / 'records.sqlite'}"
    db.upgrade(u)
    eng = db.make_engine(u)
    queries.insert_build(eng, row(buildid=1, build_number=1, make_warnings=0,
                                  phases={"make": 100.0}))  # fmt: skip
    queries.insert_build(eng, row(buildid=2, build_number=2, make_warnings=3,
                                  phases={"make": 140.0}, started_at=T0 + dt.timedelta(hours=1),
                                  finished_at=T0 + dt.timedelta(hours=1, minutes=3)))  # fmt: skip
    eng.dispose()
    return u


def add_facts(url: str, buildid: int, **values) -> None:
    """Write findings into their columns, adding a column the schema does not have yet."""
    eng = db.make_engine(url)
    have = {c["name"] for c in inspect(eng).get_columns("kernel_builds")}
    with eng.begin() as conn:
        for name in values:
            if name not in have:
                kind = "BIGINT" if name.endswith("_bytes") else "TEXT" if name == "explanation" \
                    else "JSON"  # fmt: skip
                conn.execute(text(f"ALTER TABLE kernel_builds ADD COLUMN {name} {kind}"))
        sets = ", ".join(f"{k} = :{k}" for k in values)
        params = {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in values.items()}
        conn.execute(text(f"UPDATE kernel_builds SET {sets} WHERE buildid = :b"),
                     {**params, "b": buildid})  # fmt: skip
    eng.dispose()


@pytest.fixture
def client(url):
    return dashboard.create_app(url).test_client()


def get(client, path: str) -> str:
    resp = client.get(path, base_url=BASE)
    assert resp.status_code == 200, resp.data[:300]
    return resp.get_data(as_text=True)


def details(html: str, buildid: int) -> str:
    m = re.search(rf'<details class="build-details" data-buildid="{buildid}">(.*?)</details>',
                  html, re.S)  # fmt: skip
    assert m, f"no details of build {buildid}"
    return m.group(1)


def test_old_rows_show_a_dash_and_null_json(client):
    html = get(client, "/branch.html?name=main")
    d = details(html, 2)
    assert '<span class="explanation">—</span>' in d
    assert "new warning" not in d.split("</summary>")[0]  # no count claimed without data
    assert d.count('<span class="none">—</span>') >= 3  # diff, new warnings, identity
    build = json.loads(get(client, "/branch.json?name=main"))["builds"][0]
    for field in facts.FACT_FIELDS:
        assert build[field] is None, field
    assert build["phases"]["make"] == 140.0 and build["total_s"] == 140.0
    assert build["link"] == "/#/builders/3/builds/2"


def test_findings_show_on_the_branch_page_and_in_json(client, url):
    add_facts(url, 2, explanation=EXPLANATION, alerts=["2 new warnings", "make time +40 %"],
              new_warnings=[{"file": "kernel/sched/ext.c", "message": "unused 'x'"},
                            {"file": "mm/slub.c", "message": "<b>bold</b>"}],
              config_diff={"added": {"CONFIG_NEW": "y"}, "removed": ["CONFIG_OLD"],
                           "changed": {"CONFIG_HZ": ["250", "1000"]}},
              config_dropped=[{"symbol": "SCHED_CLASS_EXT", "requested": "y", "effective": "n",
                               "reason": "depends on DEBUG_INFO_BTF (=n)"}],
              identity={"commit": "0123456", "toolchain": {"gcc": "13.1.0", "pahole": "v1.24"}},
              bzimage_bytes=12_000_000)  # fmt: skip
    html = get(client, "/branch.html?name=main")
    d = details(html, 2)
    summary = d.split("</summary>")[0]
    assert EXPLANATION in summary
    assert "2 new warnings" in summary and "config +1 −1 ~1" in summary
    assert "<code>kernel/sched/ext.c</code>: unused &#39;x&#39;" in d
    assert "&lt;b&gt;bold&lt;/b&gt;" in d  # user text is escaped
    assert re.search(r"<code>CONFIG_HZ</code></td><td><code>250</code></td><td><code>1000</code>", d)
    assert "depends on DEBUG_INFO_BTF (=n)" in d
    assert "<th>toolchain</th><td><code>gcc 13.1.0, pahole v1.24</code>" in d
    assert '<span class="alert">make time +40 %</span>' in html
    assert "11.4 MiB" in html
    build = json.loads(get(client, "/branch.json?name=main"))["builds"][0]
    assert build["explanation"] == EXPLANATION and build["alerts"][1] == "make time +40 %"
    assert build["config_diff"]["changed"] == {"CONFIG_HZ": ["250", "1000"]}
    assert build["bzimage_bytes"] == 12_000_000


def test_overview_puts_alerts_first(client, url):
    add_facts(url, 2, alerts=["bzImage +3.0 %"])
    html = get(client, "/index.html?fragment=1")
    alerts = html.split("<h3>Branches</h3>")[0]
    assert re.search(r'<tr class="alert-row" data-buildid="2">.*bzImage \+3\.0 %', alerts, re.S)
    overview = json.loads(get(client, "/index.json"))
    assert [a["build"]["buildid"] for a in overview["alerts"]] == [2]
    main = overview["branches"][0]
    assert main["alerts"] == ["bzImage +3.0 %"]
    minutes, warnings = (d["data"] for d in main["trend"]["data"]["datasets"])
    assert minutes == [1.67, 2.33] and warnings == [0, 3]  # oldest first
    assert main["trend_links"] == ["/#/builders/3/builds/1", "/#/builders/3/builds/2"]


def test_json_of_a_missing_database_is_a_503(tmp_path):
    app = dashboard.create_app(f"sqlite:///{tmp_path / 'none.sqlite'}")
    resp = app.test_client().get("/branch.json?name=main", base_url=BASE)
    assert resp.status_code == 503 and b"no records database at" in resp.data


@pytest.mark.parametrize(("value", "shown"), [
    (None, "—"), (512, "512 B"), (2048, "2.00 KiB"), (12_000_000, "11.4 MiB"),
    (300 * 1024 * 1024, "300 MiB"), (3 * 2**30, "3.00 GiB"), ("12", "—"), (True, "—"),
])  # fmt: skip
def test_sizes_read_like_sizes(value, shown):
    assert facts.fmt_bytes(value) == shown


def test_config_diff_takes_lists_or_maps_and_ignores_junk():
    assert facts.config_diff({"config_diff": "nope"}) is None
    d = facts.config_diff({"config_diff": {"added": ["A"], "removed": {"B": "m"},
                                           "changed": {"C": ["1", "2"], "D": "bad"}}})  # fmt: skip
    assert d == {"added": [("A", "")], "removed": [("B", "m")], "changed": [("C", "1", "2")]}
