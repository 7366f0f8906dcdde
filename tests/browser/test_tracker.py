"""The tracker in a real headless Chromium (Debian's, driven by Playwright): a page on one origin
loads /tracker.js from ingest on another, and exactly the expected events are counted.

Needs /usr/bin/chromium (`.ci/chromium.sh` installs it); elsewhere this skips, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import pytest

from queueflow.core.config import Settings
from queueflow.embedded import free_port
from tests.browser import chromium
from tests.browser.chromium import FLAGS
from tests.helpers import Service, service_env

CHROMIUM, playwright_api = chromium.require()

# A normal desktop user agent: headless Chromium's own says HeadlessChrome, which the crawler
# list (rightly) names.
USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
# Records every body the tracker sends (and keeps the real sendBeacon for a resend).
RECORD_BEACONS = """
window.__sent = [];
const send = navigator.sendBeacon.bind(navigator);
window.__resend = (i) => send(window.__endpoint, window.__sent[i]);
navigator.sendBeacon = (url, body) => {
  window.__endpoint = url; window.__sent.push(body); return send(url, body);
};
"""
UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
GPC_ON = "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true});"


def page_html(ingest: str, site: str, extra: str = "") -> bytes:
    return f"""<!doctype html><html><head><title>shop</title>
<script>window.queueflow = window.queueflow || function () {{
  (window.queueflow.q = window.queueflow.q || []).push(arguments) }};
queueflow('event', 'early', {{queued: true}});</script>
<script defer src="{ingest}/tracker.js" data-site="{site}" {extra}></script>
</head><body>shop</body></html>""".encode()


@contextlib.contextmanager
def page_server(pages: dict[str, bytes]) -> Iterator[str]:
    """Serves pages[<first path segment>] for every path below it: an SPA's server."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path.strip("/").split("/")[0].split("?")[0] or "home")
            if body is None:  # favicon.ico and the like
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def stored(database_url: str, site: str) -> list[tuple]:
    async def query() -> list[tuple]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT event_type, path, user_id, properties::text AS props, referrer"
                " FROM events WHERE site_id = $1 ORDER BY occurred_at, event_id",
                site,
            )
            return [tuple(r) for r in rows]
        finally:
            await conn.close()

    return asyncio.run(query())


def wait_for(database_url: str, site: str, count: int, timeout_s: float = 20) -> list[tuple]:
    deadline = time.monotonic() + timeout_s
    while len(rows := stored(database_url, site)) < count:
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    time.sleep(1.0)  # and nothing more arrives
    return stored(database_url, site)


@pytest.fixture
def services(settings: Settings) -> Iterator[dict[str, str]]:
    env = {**service_env(settings), "QUEUEFLOW_BLOCK_MS": "100"}
    started = []
    try:
        for command in ("ingest", "worker"):
            started.append(Service(command, env).wait_healthy())
        yield {"ingest": started[0].url}
    finally:
        for service in started:
            service.stop()


def test_a_page_on_another_origin_is_counted_exactly(services, settings) -> None:
    site, dnt_site = f"web-{uuid.uuid4().hex[:6]}", f"dnt-{uuid.uuid4().hex[:6]}"
    ingest = services["ingest"]
    pages = {
        "home": page_html(ingest, site),
        "pricing": page_html(ingest, site),
        "private": page_html(ingest, dnt_site, "data-respect-dnt"),
    }
    with page_server(pages) as origin, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            context = browser.new_context(user_agent=USER_AGENT)
            context.add_init_script(RECORD_BEACONS)
            page = context.new_page()
            page.goto(f"{origin}/")
            page.wait_for_function("window.__sent.length >= 2")  # the page view, the queued event
            visitor = page.evaluate("localStorage.getItem('queueflow_uid')")
            assert visitor
            page.evaluate("history.pushState({}, '', '/pricing')")  # an SPA navigation
            page.evaluate("history.replaceState({}, '', '/pricing')")  # same path: no view
            page.evaluate("queueflow('event', 'signup', {plan: 'pro', seats: 3})")
            page.wait_for_function("window.__sent.length >= 4")
            # Event ids are UUIDv7s: they lead with the time, so they sort as they were sent.
            ids = page.evaluate("window.__sent.map((body) => JSON.parse(body).event_id)")
            assert all(UUID7.fullmatch(i) for i in ids), ids
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
            page.evaluate("window.__resend(3)")  # the same beacon twice: counted once
            # What ingest would refuse is cut to what it accepts, never lost: nested values
            # dropped, a long path clipped.
            page.evaluate("queueflow('event', 'nested', {deep: {a: 1}, ok: 'yes', n: null})")
            page.evaluate("queueflow('event')")  # no type: nothing to send
            page.wait_for_function("window.__sent.length >= 5")
            page.reload()  # a second load: the same visitor
            page.wait_for_function("window.__sent.length >= 2")
            assert page.evaluate("localStorage.getItem('queueflow_uid')") == visitor
            page.evaluate("queueflow('identify', 'customer-42'); queueflow('pageview')")
            page.wait_for_function("window.__sent.length >= 3")

            private = browser.new_context(user_agent=USER_AGENT)
            private.add_init_script(RECORD_BEACONS + GPC_ON)
            quiet = private.new_page()
            quiet.goto(f"{origin}/private")
            quiet.wait_for_load_state("load")
            time.sleep(0.5)
            assert quiet.evaluate("window.__sent.length") == 0
        finally:
            browser.close()

    early = '{"queued": true}'
    signup = '{"plan": "pro", "seats": 3}'
    expected = sorted(
        [
            ("page_view", "/", visitor, None),
            ("early", "/", visitor, early),
            ("page_view", "/pricing", visitor, None),
            ("signup", "/pricing", visitor, signup),
            ("nested", "/pricing", visitor, '{"n": null, "ok": "yes"}'),
            ("page_view", "/pricing", visitor, None),  # the reload
            ("early", "/pricing", visitor, early),
            ("page_view", "/pricing", "customer-42", None),
        ],
        key=repr,
    )
    rows = wait_for(settings.database_dsn(), site, len(expected))
    assert sorted(((t, p, u, props) for t, p, u, props, _ in rows), key=repr) == expected
    assert all(referrer is None for *_, referrer in rows)  # same-origin navigation: none
    assert stored(settings.database_dsn(), dnt_site) == []  # nothing at all under GPC
