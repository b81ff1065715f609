"""The kernel build pages in headless Chromium, against a real master with real builds.

One real master and worker (servicekit) builds the fake kernel of
tests/support/fakekernel.py on two branches; Debian's ``chromium`` driven by its
``chromium-driver`` (Selenium, no driver download) opens each page through
Buildbot's own UI. Each page must load inside the UI's shell (Buildbot's
menu around it), log no errors to the browser console, carry one plot point
per build (read from the page's Chart.js charts), and link the right builds;
an alert and a rebuild explanation written for one build appear where a
developer looks for them.

The records' per-build findings (explanation, alerts, config diff, new
warnings, sizes) are written here, into the columns of those names, for the
builds chosen to trip them; where the database does not have a column yet,
the test adds it.

Screenshots of every page go to ``$KTSTR_CI_SCREENSHOTS`` (``make
screenshots`` sets it) or else to ``artifacts/screenshots/`` of the checkout
(ignored by git), named in the output.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from master.records import db as records_db
from master.records import queries
from tests.support.fakekernel import tree_files
from tests.support.servicekit import ServiceKit

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
# Console errors of Buildbot's shell itself, not of these pages: it asks every plugin for a
# stylesheet (these two have none), and its favicon updates fetch buildbotURL + "/icon.png"
# (a double slash: 404). On Buildbot's build page the shell also fetches "//icon.svg" with
# axios to colour the favicon by result, and that 404 surfaces later as an uncaught
# "Request failed with status code 404" that names no URL: it belongs to Buildbot's page, so
# each page's check starts from an empty console (open_page) and Buildbot's pages are not
# checked.
FOREIGN_ERRORS = ("plugins/grid_view/styles.css", "plugins/wsgi_dashboards/styles.css",
                  "//icon.png", "//icon.svg")  # fmt: skip

ALERT = "bzImage +3.4 % (limit 2 %)"
EXPLANATION = "nearest cached entry local-1111111 differs in: commit (1111111 → 2222222, 1 file changed)"
NEW_WARNING = {"file": "kernel/ktstr_fake.c", "message": "unused variable 'ktstr_new'"}
DIFF = {"added": {"CONFIG_KTSTR_FAKE_NEW": "y"}, "removed": [],
        "changed": {"CONFIG_HZ": ["250", "1000"]}}  # fmt: skip
FACT_COLUMNS = {
    "identity": "JSON", "config_overrides": "JSON", "config_dropped": "JSON", "warnings": "JSON",
    "config_diff": "JSON", "new_warnings": "JSON", "alerts": "JSON", "explanation": "TEXT",
    "bzimage_bytes": "BIGINT", "vmlinux_bytes": "BIGINT", "vmlinux_stripped_bytes": "BIGINT",
}  # fmt: skip


def shots_dir() -> Path:
    wanted = os.environ.get("KTSTR_CI_SCREENSHOTS")
    path = Path(wanted) if wanted else REPO / "artifacts" / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_facts(kit: ServiceKit, builds: list[dict[str, Any]], tripped: int) -> None:
    """Sizes and an identity for every build; explanation, alert, diff, new warning for one."""
    engine = records_db.make_engine(kit.settings.databases.records, must_exist=True)
    try:
        have = {c["name"] for c in inspect(engine).get_columns("kernel_builds")}
        with engine.begin() as conn:
            for name, kind in FACT_COLUMNS.items():
                if name not in have:
                    conn.execute(text(f"ALTER TABLE kernel_builds ADD COLUMN {name} {kind}"))
            for i, b in enumerate(builds):
                trip = b["buildid"] == tripped
                values = {
                    "bz": 1_000_000 + 40_000 * i, "vm": 9_000_000 + 1000 * i, "vs": 3_000_000,
                    "ident": json.dumps({"commit": "feedbeef", "profile": "tiny",
                                         "toolchain": {"gcc": "12.2.0", "ld": "2.40"}}),
                    "why": EXPLANATION if trip else "first build of this commit and profile",
                    "alerts": json.dumps([ALERT] if trip else []),
                    "new": json.dumps([NEW_WARNING] if trip else []),
                    "diff": json.dumps(DIFF) if trip else None,
                    "id": b["buildid"],
                }  # fmt: skip
                conn.execute(text(
                    "UPDATE kernel_builds SET bzimage_bytes=:bz, vmlinux_bytes=:vm,"
                    " vmlinux_stripped_bytes=:vs, identity=:ident, explanation=:why,"
                    " alerts=:alerts, new_warnings=:new, config_diff=:diff WHERE buildid=:id"
                ), values)  # fmt: skip
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("webui")
    with ServiceKit(root, llc_groups=[[0], [1]], profiles=("tiny",)) as k:
        tree = k.make_tree(tree_files(), path=k.root / "src" / "a")
        builds = []
        k.push(tree, "feature-a")
        builds.append(k.wait_finished(k.wait_build("feature-a", timeout=30)["buildid"], 300))
        k.commit(tree, {"NOTES.ktstr": "a second commit\n"}, "second")
        k.push(tree, "feature-a")
        after = builds[-1]["buildid"]
        builds.append(k.wait_finished(
            k.wait_build("feature-a", after_buildid=after, timeout=30)["buildid"], 300))
        k.push(tree, "feature-b")  # the same commit on another branch
        builds.append(k.wait_finished(k.wait_build("feature-b", timeout=30)["buildid"], 300))
        for b in builds:
            assert b["results"] in (k.SUCCESS, k.WARNINGS), k.build_steps(b["buildid"])
        k.wait_for(lambda: len(recorded(k)) == len(builds), 30, "the records rows")
        write_facts(k, builds, tripped=builds[1]["buildid"])
        k.builds_made = builds
        yield k


def recorded(kit: ServiceKit) -> list[dict[str, Any]]:
    engine = records_db.make_engine(kit.settings.databases.records, must_exist=True)
    try:
        return queries.recent_builds(engine, limit=100)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMEDRIVER, CHROMIUM):
        if not shutil.which(path):
            pytest.fail(f"{path} is missing: `make deps` installs chromium and chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1500,1100"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots() -> Path:
    path = shots_dir()
    print(f"\nscreenshots: {path}")
    return path


def build_url(kit: ServiceKit, buildid: int) -> str:
    b = kit.api(f"builds/{buildid}")["builds"][0]
    return f"/#/builders/{b['builderid']}/builds/{b['number']}"


def console_errors(driver) -> list[str]:
    return [
        e["message"] for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and not any(f in e["message"] for f in FOREIGN_ERRORS)
    ]  # fmt: skip


def open_page(driver, kit: ServiceKit, route: str, page: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # what the previous page left was checked (or is Buildbot's)
    t0 = time.monotonic()
    # The UI's own address (buildbotURL): Buildbot's shell fetches some of its files from
    # there, which another origin (127.0.0.1 for localhost) would refuse as cross-origin.
    driver.get(kit.settings.web_url + "#/" + route)
    wait_page(driver, page)
    print(f"\n#/{route}: loaded and drawn in {time.monotonic() - t0:.2f}s")
    WebDriverWait(driver, 30).until(lambda d: d.find_elements("css selector", ".sidebar"))


def wait_page(driver, page: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    sel = f'[data-ktstr-page="{page}"][data-ktstr-state]'

    def state(d):
        found = d.find_elements("css selector", sel)
        s = found[0].get_attribute("data-ktstr-state") if found else None
        return s if s in ("ready", "error") else None

    assert WebDriverWait(driver, 30).until(state) == "ready"


def in_shell(driver) -> None:
    """Buildbot's menu is around the page, with our group in it."""
    menu = driver.find_element("css selector", ".sidebar").text
    assert "Builds" in menu and "Kernel builds" in menu, menu


def charts(driver) -> dict[str, dict[str, Any]]:
    """Every drawn chart on the page by name: its labels, datasets' lengths and links."""
    return driver.execute_script("""
        const out = {};
        document.querySelectorAll('canvas[data-chart-name]').forEach((c, i) => {
            const chart = Chart.getChart(c);
            out[c.dataset.chartName + (out[c.dataset.chartName] ? '#' + i : '')] = {
                labels: chart.data.labels,
                lengths: chart.data.datasets.map(d => d.data.length),
                data: chart.data.datasets.map(d => d.data),
                links: JSON.parse(c.dataset.links),
            };
        });
        return out;
    """)


def test_overview_in_the_shell_with_trends_and_alerts(kit, browser, shots):
    open_page(browser, kit, "ktstr", "index")
    in_shell(browser)
    drawn = charts(browser)
    sparks = [v for k, v in drawn.items() if k.startswith("spark")]
    assert sorted(len(s["labels"]) for s in sparks) == [1, 2]  # feature-b, feature-a
    for s in sparks:
        assert set(s["lengths"]) == {len(s["labels"])}
    tripped = kit.builds_made[1]["buildid"]
    alert_rows = browser.find_elements("css selector", "table.alerts tr.alert-row")
    assert [r.get_attribute("data-buildid") for r in alert_rows] == [str(tripped)]
    assert ALERT in alert_rows[0].text
    row_a = browser.find_element("css selector", 'tr.branch-row[data-branch="feature-a"]')
    assert ALERT in row_a.text
    browser.save_screenshot(str(shots / "overview.png"))
    assert console_errors(browser) == []


def test_branch_page_plots_link_builds_and_explain(kit, browser, shots):
    open_page(browser, kit, "ktstr", "index")
    # Navigation between pages stays inside the app.
    browser.find_element("css selector", 'tr.branch-row[data-branch="feature-a"] a').click()
    wait_page(browser, "branch")
    assert "#/ktstr/branch?name=feature-a" in browser.current_url
    in_shell(browser)
    ours = [b for b in kit.builds_made if b["buildid"] != kit.builds_made[2]["buildid"]]
    want_links = [build_url(kit, b["buildid"]) for b in ours]  # oldest first, as plotted
    drawn = charts(browser)
    assert set(drawn) == {"branch-phases", "branch-warnings", "branch-sizes"}
    for name, chart in drawn.items():
        assert len(chart["labels"]) == len(ours), name
        assert set(chart["lengths"]) == {len(ours)}, name
        assert chart["links"] == want_links, name
    bz = drawn["branch-sizes"]["data"][0]
    assert all(v is not None for v in bz) and bz[1] > bz[0]
    phases = drawn["branch-phases"]["data"]
    assert any(v for ds in phases for v in ds if v)  # the make phase took time
    # The explanation, new warning and config diff of the tripped build: one click away.
    browser.save_screenshot(str(shots / "branch.png"))
    tripped = kit.builds_made[1]["buildid"]
    details = browser.find_element("css selector", f'details[data-buildid="{tripped}"]')
    assert EXPLANATION in details.text  # the summary line says why
    details.find_element("tag name", "summary").click()
    assert NEW_WARNING["message"] in details.text and "CONFIG_HZ" in details.text
    assert ALERT in details.text
    browser.execute_script("arguments[0].closest('tr').previousElementSibling.scrollIntoView()",
                           details)  # fmt: skip
    browser.save_screenshot(str(shots / "branch-details.png"))
    assert console_errors(browser) == []
    # A point of the plot opens its build in Buildbot's build page.
    browser.execute_script("""
        const c = document.querySelector('canvas[data-chart-name="branch-sizes"]');
        const chart = Chart.getChart(c);
        const p = chart.getDatasetMeta(0).data[1];
        const r = c.getBoundingClientRect();
        c.scrollIntoView();
        const r2 = c.getBoundingClientRect();
        c.dispatchEvent(new MouseEvent('click', {clientX: r2.left + p.x, clientY: r2.top + p.y,
                                                 bubbles: true}));
    """)
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 20).until(lambda d: want_links[1].lstrip("/") in d.current_url)


def test_trends_page_plots_every_build_by_profile(kit, browser, shots):
    open_page(browser, kit, "ktstr/trends", "trends")
    in_shell(browser)
    drawn = charts(browser)
    assert set(drawn) == {"profile-1-phases", "profile-1-warnings", "profile-1-sizes"}
    n = len(kit.builds_made)
    for chart in drawn.values():
        assert len(chart["labels"]) == n and set(chart["lengths"]) == {n}
        assert sorted(chart["links"]) == sorted(build_url(kit, b["buildid"])
                                                for b in kit.builds_made)  # fmt: skip
    heading = browser.find_element("css selector", 'h3.profile[data-profile="tiny"]')
    assert heading.text == f"Profile tiny — {n} builds"
    browser.save_screenshot(str(shots / "trends.png"))
    assert console_errors(browser) == []


def test_cache_page_is_a_table_linking_the_building_build(kit, browser, shots):
    open_page(browser, kit, "ktstr/cache", "cache")
    in_shell(browser)
    rows = {r.get_attribute("data-key"): r
            for r in browser.find_elements("css selector", "table.cache tr.entry")}  # fmt: skip
    uses: dict[str, list[dict[str, Any]]] = {}
    for b in kit.builds_made:  # oldest first
        props = kit.build_properties(b["buildid"])
        uses.setdefault(props["cache_key"], []).append({**props, "buildid": b["buildid"]})
    assert set(rows) == set(uses)
    for key, props in uses.items():
        row = rows[key]
        stored = [p for p in props if p["kernel_outcome"] == "cached"]
        built_by = row.find_element("css selector", "a.buildlink").get_attribute("href")
        assert built_by.endswith(build_url(kit, stored[0]["buildid"]))
        last_used = row.find_element("css selector", "a.lastlink").get_attribute("href")
        assert last_used.endswith(build_url(kit, props[-1]["buildid"]))
        assert "=" not in row.text  # no key=value dumps
        assert "MiB" in row.text  # sizes as people read them
    browser.save_screenshot(str(shots / "cache.png"))
    assert console_errors(browser) == []


def test_matrix_page_through_the_menu(kit, browser, shots):
    open_page(browser, kit, "ktstr", "index")
    # The menu group opens to its pages; its Matrix runs entry opens the list in the app.
    from selenium.webdriver.support.ui import WebDriverWait

    def menu_item(d, caption: str):
        found = [e for e in d.find_elements("css selector", ".sidebar .bb-sidebar-button")
                 if e.text.strip() == caption]  # fmt: skip
        return found[0] if found else None

    def opened(d):
        item = menu_item(d, "Matrix runs")
        return item if item is not None and item.size["height"] > 0 else None

    if not opened(browser):  # the group may already be open on one of its own pages
        menu_item(browser, "Kernel builds").click()
    WebDriverWait(browser, 10).until(opened).click()
    wait_page(browser, "matrix")
    assert browser.current_url.endswith("#/ktstr/matrix")
    in_shell(browser)
    assert "no matrix runs yet" in browser.find_element("css selector", ".bb-ktstr").text
    browser.save_screenshot(str(shots / "matrix.png"))
    assert console_errors(browser) == []


def test_every_page_is_json_too(kit):
    base = kit.web_url + "plugins/ktstr/dash/"

    def get(path: str) -> Any:
        with urllib.request.urlopen(base + path, timeout=30) as resp:
            assert resp.headers["Content-Type"].startswith("application/json")
            return json.load(resp)

    branch = get("branch.json?name=feature-a")
    assert [b["buildid"] for b in branch["builds"]] == [
        b["buildid"] for b in reversed(kit.builds_made[:2])
    ]
    tripped = branch["builds"][0]
    assert tripped["alerts"] == [ALERT] and tripped["explanation"] == EXPLANATION
    assert tripped["link"] == build_url(kit, tripped["buildid"])
    assert tripped["phases"]["make"] is not None
    overview = get("index.json")
    assert {b["branch"] for b in overview["branches"]} == {"feature-a", "feature-b"}
    assert [a["build"]["buildid"] for a in overview["alerts"]] == [tripped["buildid"]]
    trends = get("trends.json")
    assert [p["profile"] for p in trends["profiles"]] == ["tiny"]
    cache = get("cache.json")
    keys = {kit.build_properties(b["buildid"])["cache_key"] for b in kit.builds_made}
    assert {e["cache_key"] for e in cache["entries"]} == keys
