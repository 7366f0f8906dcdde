"""The dashboard in a real headless Chromium against a real deployment (ingest, a worker and
reporting as processes, events sent through ingest): the figures on the page are the API's,
the freshness line follows the queue, the token flow holds, the CSP holds (no violation on the
console), axe-core finds nothing serious, and each main view leaves a screenshot in
build/screenshots (QUEUEFLOW_SCREENSHOTS elsewhere).

Needs /usr/bin/chromium (`.ci/chromium.sh`); the accessibility check needs npm (axe-core is
fetched once into ~/.cache). Without them this skips, saying why.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from queueflow.core.config import Settings
from tests.browser import chromium
from tests.browser.chromium import FLAGS
from tests.helpers import Service, send, service_env

CHROMIUM, playwright_api = chromium.require()
expect = playwright_api.expect
ALL, SCOPED = "dash-all-sites-token", "dash-scoped-token"
SITE, OTHER = "dash.example", "other.example"
SHOTS = Path(
    os.environ.get("QUEUEFLOW_SCREENSHOTS", Path(__file__).parents[2] / "build/screenshots")
)
AXE_VERSION = "4.10.3"
AXE_CACHE = Path.home() / ".cache" / "queueflow-axe"


def workload(now: datetime) -> list[dict[str, Any]]:
    """Three days of a small site, users coming back, and a little of another site."""
    rng = random.Random(12)
    events = []
    for i in range(900):
        at = now - timedelta(minutes=rng.randint(1, 3 * 24 * 60))
        events.append(
            {
                "site_id": SITE,
                "event_type": "page_view" if rng.random() < 0.85 else "signup",
                "path": rng.choice(["/", "/", "/", "/pricing", "/docs", "/blog"]),
                "user_id": f"visitor-{int(80 ** rng.random())}",
                "timestamp": at.isoformat(),
                **({"referrer": "https://news.example/"} if i % 3 == 0 else {}),
            }
        )
    events += [
        {
            "site_id": OTHER,
            "event_type": "page_view",
            "path": "/",
            "user_id": f"o{i}",
            "timestamp": (now - timedelta(minutes=i)).isoformat(),
        }
        for i in range(12)
    ]
    return events


@pytest.fixture
def deployment(settings: Settings) -> Iterator[dict[str, Any]]:
    env = {
        **service_env(settings),
        "QUEUEFLOW_BLOCK_MS": "100",
        "QUEUEFLOW_STATS_TOKENS": f"{ALL},{SCOPED}={OTHER}",
    }
    not_near_midnight()
    ingest = Service("ingest", env).wait_healthy()
    reporting = Service("reporting", env).wait_healthy()
    worker = Service("worker", env).wait_healthy()
    state = {"env": env, "ingest": ingest.url, "reporting": reporting.url, "worker": worker}
    try:
        send(ingest.url, workload(datetime.now(UTC)))
        drained(reporting.url)
        yield state
    finally:
        for service in (state["worker"], reporting, ingest):
            service.stop()


def not_near_midnight(margin_s: float = 180) -> None:
    """Wait for the next UTC day when this one ends within `margin_s`: the page and the
    tests read "today" from the clock, and the events are sent as of today, so a test
    crossing midnight would find the new day empty."""
    now = datetime.now(UTC)
    left = 86_400 - (now.hour * 3600 + now.minute * 60 + now.second + now.microsecond / 1e6)
    if left < margin_s:
        time.sleep(left + 1)


def api(url: str, route: str, **params: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {ALL}"}
    return httpx.get(f"{url}{route}", params=params, headers=headers, timeout=10).json()


def drained(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while api(url, "/stats", site_id=SITE)["lag_entries"] != 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def open_page(browser: Any, url: str, width: int = 1280, **context: Any) -> tuple[Any, list]:
    page = browser.new_context(
        locale="en-US", viewport={"width": width, "height": 900}, **context
    ).new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    page.goto(url)
    return page, console


def sign_in(page: Any, token: str) -> None:
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", token)
    page.click("#login button")


NOT_LOADED = "\u2013"  # the en dash the page shows where a figure has not arrived


def loaded(page: Any) -> None:
    expect(page.locator("#views")).not_to_have_text(NOT_LOADED)


def figures_equal_the_api(page: Any, url: str, first: str, last: str) -> dict[str, Any]:
    totals = api(url, "/stats", site_id=SITE, **{"from": first, "to": last})
    expect(page.locator("#views")).to_have_text(f"{totals['total_views']:,}")
    expect(page.locator("#users")).to_have_text(f"{totals['unique_users']:,}")
    rows = api(url, "/stats/breakdown", site_id=SITE, by="path", **{"from": first, "to": last})
    top = rows["rows"][0]
    cells = page.locator('[data-by="path"] tbody tr').first.locator("td")
    expect(cells).to_have_text([top["value"], f"{top['events']:,}", f"{top['unique_users']:,}"])
    return totals


def test_the_page_shows_the_apis_figures(deployment, browser) -> None:
    url = deployment["reporting"]
    today = datetime.now(UTC).date()
    page, console = open_page(browser, f"{url}/?site={SITE}&range=7d")
    sign_in(page, ALL)
    loaded(page)
    figures_equal_the_api(page, url, str(today - timedelta(days=6)), str(today))
    assert re.fullmatch(
        r"Counted up to \d\d:\d\d:\d\d UTC \(\d{4}-\d\d-\d\d\), 0 events still in the queue; "
        r"this range is still filling\.",
        page.inner_text("#freshness"),
    )
    page.screenshot(path=str(shot("week")), full_page=True)

    # The URL holds the view: "Today" is a bookmarkable range, and one hour's point carries
    # the API's figures for that hour.
    page.click('#ranges button[data-range="today"]')
    expect(page).to_have_url(re.compile(r"range=today"))
    figures_equal_the_api(page, url, str(today), str(today))
    series = api(
        url,
        "/stats/timeseries",
        site_id=SITE,
        interval="hour",
        **{"from": str(today), "to": str(today)},
    )
    busiest = max(series["points"], key=lambda p: p["views"])
    hour = series["points"].index(busiest)
    title = page.locator("#chart circle title").nth(hour)
    views, users = busiest["views"], busiest["unique_users"]
    assert title.text_content() == (
        f"{busiest['start'][5:16].replace('T', ' ')}: {views:,} view{'s' * (views != 1)}, "
        f"{users:,} user{'s' * (users != 1)}"
    )
    page.reload()
    loaded(page)  # the token is kept for the session, the range by the URL
    expect(page.locator('#ranges button[data-range="today"]')).to_have_attribute(
        "aria-pressed", "true"
    )
    expect(page.locator("#realtime")).to_have_text(re.compile(r"\d+ views?"))

    narrow, narrow_console = open_page(browser, f"{url}/?site={SITE}&range=30d", width=360)
    sign_in(narrow, ALL)
    loaded(narrow)
    figures_equal_the_api(narrow, url, str(today - timedelta(days=29)), str(today))
    narrow.screenshot(path=str(shot("month-360px")), full_page=True)
    ingest = api(url, "/stats/ingest", site_id=SITE)
    rows = narrow.locator("#ingest tr")
    expect(rows).to_have_text(
        [
            f"Accepted{ingest['accepted']:,}",
            f"Dropped as bots{ingest['dropped']['bot']:,}",
            f"Rejected as invalid{ingest['rejected']['validation']:,}",
        ]
    )
    assert not [m for m in console + narrow_console if "Content Security Policy" in m]


def test_the_freshness_line_follows_the_queue(deployment, browser) -> None:
    url = deployment["reporting"]
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)
    deployment["worker"].stop()
    try:
        late = {"site_id": SITE, "event_type": "page_view", "path": "/late", "user_id": "late"}
        send(deployment["ingest"], [late for _ in range(7)])
        deadline = time.monotonic() + 20
        while api(url, "/stats", site_id=SITE)["lag_entries"] != 7:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        page, _ = open_page(browser, f"{url}/?site={SITE}&range=today")
        sign_in(page, ALL)
        line = page.locator("#freshness")
        expect(line).to_contain_text("7 events still in the queue; this range is still filling.")
        expect(line).to_have_class(re.compile("incomplete"))
        page.screenshot(path=str(shot("queue-waiting")), full_page=True)
        # Yesterday ended before the oldest waiting event: complete, and not marked, even now.
        page.goto(f"{url}/?site={SITE}&from={yesterday}&to={yesterday}")
        expect(line).to_contain_text("7 events still in the queue; this range is complete.")
        expect(line).not_to_have_class(re.compile("incomplete"))
    finally:
        deployment["worker"] = Service("worker", deployment["env"]).wait_healthy()
    drained(url)
    page.goto(f"{url}/?site={SITE}&range=today")
    expect(line).to_contain_text("0 events still in the queue")
    totals = figures_equal_the_api(page, url, str(today), str(today))
    assert totals["lag_entries"] == 0 and totals["complete"] is False


def test_tokens_none_wrong_and_scoped(deployment, browser) -> None:
    url = deployment["reporting"]
    page, _ = open_page(browser, f"{url}/?site={SITE}")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#views")).to_have_text(NOT_LOADED)  # nothing without a token
    sign_in(page, "not-a-token")
    expect(page.locator("#login-why")).to_have_text("That token was refused. Try another.")
    page.fill("#token", SCOPED)
    page.click("#login button")
    expect(page.locator("#site option")).to_have_text([OTHER])
    expect(page.locator("#site")).to_have_value(OTHER)
    expect(page.locator("#problem")).to_have_text(f"This token does not cover {SITE}.")
    expect(page).to_have_url(re.compile(f"site={re.escape(OTHER)}"))
    page.screenshot(path=str(shot("scoped-token")), full_page=True)
    assert page.evaluate("sessionStorage.getItem('queueflow_token')") == SCOPED
    assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []


def test_an_empty_site_shows_how_to_send_its_first_event(deployment, browser) -> None:
    page, _ = open_page(browser, f"{deployment['reporting']}/?site=new.example")
    sign_in(page, ALL)
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#snippet-tag")).to_contain_text('data-site="new.example"')
    expect(page.locator("#snippet-curl")).to_contain_text('"site_id":"new.example"')
    page.screenshot(path=str(shot("empty-site")), full_page=True)
    # A site id from the URL is quoted for where the snippets put it.
    hostile = "x\"><script src=//evil.example/a.js></script>'; rm -rf ~; '"
    page.goto(f"{deployment['reporting']}/?" + str(httpx.QueryParams({"site": hostile})))
    expect(page.locator("#empty")).to_be_visible()
    tag = page.locator("#snippet-tag").text_content()
    assert 'data-site="x&quot;&gt;&lt;script' in tag and "<script src=//evil" not in tag
    curl = page.locator("#snippet-curl").text_content()
    assert curl.endswith(
        "-d '"
        + json.dumps(
            {"site_id": hostile, "event_type": "page_view", "path": "/", "user_id": "u1"},
            separators=(",", ":"),
        ).replace("'", "'\\''")
        + "'"
    )


def test_without_tokens_the_page_opens_at_once(settings: Settings, browser) -> None:
    reporting = Service("reporting", service_env(settings)).wait_healthy()
    try:
        page, _ = open_page(browser, f"{reporting.url}/")
        expect(page.locator("#freshness")).to_have_text("No site has events yet.")
        expect(page.locator("#login")).to_be_hidden()
        expect(page.locator("#empty")).to_be_visible()
    finally:
        reporting.stop()


def test_the_page_is_small_private_and_strict(deployment) -> None:
    url = deployment["reporting"]
    total = 0
    for path in ("/", "/dashboard", "/dashboard/app.js", "/dashboard/app.css"):
        answer = httpx.get(f"{url}{path}", headers={"Accept-Encoding": "gzip"})
        assert answer.status_code == 200, path  # no token: the page holds no data
        assert answer.headers["content-encoding"] == "gzip"
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        total += len(gzip.compress(answer.content)) if path != "/dashboard" else 0
    assert total < 100_000, total
    page = httpx.get(url).text
    assert ALL not in page and SITE not in page and "<script>" not in page


def test_axe_finds_no_serious_violation(deployment, browser) -> None:
    axe = axe_script()
    page, _ = open_page(
        browser, f"{deployment['reporting']}/?site={SITE}&range=7d", bypass_csp=True
    )
    sign_in(page, ALL)
    loaded(page)
    page.add_script_tag(content=axe)
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    found = [(v["id"], v["impact"], len(v["nodes"])) for v in result["violations"]]
    print("axe-core", AXE_VERSION, "violations:", found or "none")
    assert not [v for v in found if v[1] in ("serious", "critical")], found


def shot(name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS / f"dashboard-{name}.png"


def axe_script() -> str:
    script = AXE_CACHE / "node_modules" / "axe-core" / "axe.min.js"
    if not script.exists():
        if shutil.which("npm") is None:
            pytest.skip("accessibility check: npm is not installed (it fetches axe-core)")
        AXE_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "npm",
                "install",
                "--prefix",
                str(AXE_CACHE),
                "--no-save",
                "--no-audit",
                "--no-fund",
                f"axe-core@{AXE_VERSION}",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return script.read_text()


LAYOUT_SHIFT = """() => new Promise((done) => {
  let total = 0;
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) if (!entry.hadRecentInput) total += entry.value;
  }).observe({type: "layout-shift", buffered: true});
  setTimeout(() => done(total), 500);
})"""


def test_keyboard_csv_and_no_layout_shift(deployment, browser) -> None:
    url = deployment["reporting"]
    page, console = open_page(browser, f"{url}/?site={SITE}&range=7d", accept_downloads=True)
    sign_in(page, ALL)
    loaded(page)
    assert page.evaluate(LAYOUT_SHIFT) < 0.1  # figures arrive into space kept for them
    # Keyboard only: focus the 30-day button and press Enter.
    page.focus('#ranges button[data-range="7d"]')
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"range=30d"))
    loaded(page)
    today = datetime.now(UTC).date()
    with page.expect_download() as download:
        page.click('button.csv[data-by="referrer"]')
    text = Path(download.value.path()).read_bytes().decode()
    expected = httpx.get(
        f"{url}/stats/breakdown",
        params={
            "site_id": SITE,
            "by": "referrer",
            "limit": "1000",
            "format": "csv",
            "from": str(today - timedelta(days=29)),
            "to": str(today),
        },
        headers={"Authorization": f"Bearer {ALL}"},
    ).text
    assert text == expected and text.startswith("value,events,unique_users")
    assert not [m for m in console if "Content Security Policy" in m], console
