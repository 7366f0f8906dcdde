"""`queueflow smoke`: send one event through a running deployment and read it back.

It checks the whole path (ingest -> stream -> worker -> PostgreSQL -> reporting), which no
single probe does; the chart's `helm test` runs it. The event goes to a site of its own,
`queueflow-smoke-<random>`, so no real site's numbers move, and its count must be exactly 1.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime


def smoke(ingest_url: str, reporting_url: str, timeout_s: float, token: str | None = None) -> int:
    """`token`: an all-sites token of QUEUEFLOW_STATS_TOKENS, when reporting needs one."""
    now = datetime.now(UTC)
    site = f"queueflow-smoke-{secrets.token_hex(6)}"
    event = {
        "site_id": site,
        "event_type": "page_view",
        "path": "/smoke",
        "user_id": "smoke",
        "timestamp": now.isoformat(),
    }
    try:
        status, reply = _request(f"{ingest_url.rstrip('/')}/event", event)
    except OSError as exc:
        return _fail(f"POST /event failed: {exc}")
    if status != 202:
        return _fail(f"POST /event answered {status}: {reply}")
    stats_url = f"{reporting_url.rstrip('/')}/stats?site_id={site}&date={now:%Y-%m-%d}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, stats = _request(stats_url, token=token)
            if status == 200 and stats["total_views"] == 1:
                print(f"queueflow smoke: ok, event {reply['event_id']} counted for {site}")
                return 0
        except OSError as exc:
            stats = {"error": str(exc)}
        if time.monotonic() > deadline:
            return _fail(f"event not counted within {timeout_s:g} s; last GET /stats: {stats}")
        time.sleep(0.5)


def _request(url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"detail": exc.read().decode(errors="replace")[:500]}


def _fail(message: str) -> int:
    print(f"queueflow smoke: {message}", file=sys.stderr)
    return 1
