"""Range reporting (/stats from-to, /stats/timeseries, /stats/breakdown, /stats/realtime,
/sites) over a real port against real PostgreSQL, every figure checked against a naive recount
in Python of a deterministic workload (DESIGN.md "Reporting routes", CSV, "Freshness")."""

from __future__ import annotations

import csv
import io
import random
import time as clock
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from typing import NamedTuple

import httpx
import pytest

from queueflow.core.config import Settings
from queueflow.core.events import Event, encode_event
from queueflow.core.store import EventStore, create_pool, stored_event
from queueflow.reporting.app import create_app
from tests.helpers import serve

FIRST, LAST = date(2026, 11, 10), date(2026, 11, 19)  # ten past UTC days
DAYS = [FIRST + timedelta(days=n) for n in range((LAST - FIRST).days + 1)]
EMPTY_DAYS = {"a.example": {date(2026, 11, 13), date(2026, 11, 17)}, "b.example": {DAYS[5]}}
CLICKS_ONLY = {"b.example": {LAST}}  # a day of events, none of them page views
HOURS = (0, 1, 7, 8, 9, 13, 14, 20, 23)  # the other hours stay empty
PATHS = ("/", "/pricing", "/docs", "/Docs", "/blog/\u00e9", "/blog/z")
TYPES = ("page_view",) * 6 + ("click", "signup")
REFERRERS = (None, None, "https://google.com/", "https://news.ycombinator.com/", "https://t.co/x")
TIES = "Z.example"  # sorts first in byte order, last in most locales
TOKENS = "all-token,scoped-token=a.example|Z.example"


class Ev(NamedTuple):
    site: str
    kind: str
    path: str
    user: str
    ts: datetime
    ref: str | None
    id: str


def workload() -> list[Ev]:
    """What is sent, in order, resends included."""
    rng = random.Random(20261201)
    sent: list[Ev] = []
    for site in ("a.example", "b.example"):
        n = 0  # ids per site: both sites use e0, e1, ... (two events each)
        for day in DAYS:
            if day in EMPTY_DAYS[site]:
                continue
            for _ in range(rng.randint(60, 120)):
                at = datetime.combine(day, time(rng.choice(HOURS), rng.randrange(60)), UTC)
                at += timedelta(seconds=rng.randrange(60))
                kind = "click" if day in CLICKS_ONLY.get(site, ()) else rng.choice(TYPES)
                # Regulars come back day after day; passers-by are mostly seen once.
                user = f"u{rng.randrange(20)}" if rng.random() < 0.3 else f"v{rng.randrange(9999)}"
                ev = Ev(site, kind, rng.choice(PATHS), user, at, rng.choice(REFERRERS), f"e{n}")
                n += 1
                sent.append(ev)
                if rng.random() < 0.05:
                    sent.append(ev)  # a resend in the same batch
    day = datetime.combine(DAYS[1], time(12), UTC)
    for i, (kind, path, user, ref, later) in enumerate(
        [
            ("page_view", "/zeta", "c1", None, 0),
            ("page_view", "/zeta", "c2", None, 0),
            ("page_view", "/Zeta", "c4", "https://b.example/", 0),
            ("page_view", "/Zeta", "c4", "https://b.example/", 0),
            ("page_view", "/alpha", "c1", "https://A.example/", 0),
            ("page_view", "/alpha", "c3", "https://A.example/", 3),
            ("click", "/alpha", "c5", None, 3),
        ]
    ):
        sent.append(
            Ev(TIES, kind, path, user, day + timedelta(days=later, minutes=i), ref, f"t{i}")
        )
    return sent


def dedup(sent: list[Ev]) -> list[Ev]:
    seen: dict[tuple[str, str], Ev] = {}
    for ev in sent:
        seen.setdefault((ev.site, ev.id), ev)
    return list(seen.values())


def encoded(events: list[Ev]) -> list[bytes]:
    ms = int(clock.time() * 1000)
    return [
        stored_event(
            encode_event(
                Event(e.site, e.kind, e.path, e.user, e.ts, event_id=e.id, referrer=e.ref)
            ),
            ms,
        )
        for e in events
    ]


async def save(database_url: str, batches: list[list[Ev]]) -> list[int]:
    pool = await create_pool(database_url, max_size=1)
    try:
        return [await EventStore(pool).save_batch(encoded(batch)) for batch in batches]
    finally:
        await pool.close()


# The naive recount.
def ranked(counts: dict) -> list:
    return sorted(counts, key=lambda v: (-counts[v], v is None, (v or "").encode()))


def within(events: list[Ev], site: str, first: date, last: date) -> list[Ev]:
    return [e for e in events if e.site == site and first <= e.ts.date() <= last]


def recount_totals(events: list[Ev], site: str, first: date, last: date, limit: int) -> dict:
    chosen = within(events, site, first, last)
    paths = Counter(e.path for e in chosen if e.kind == "page_view")
    return {
        "total_views": sum(paths.values()),
        "unique_users": len({e.user for e in chosen}),
        "top_paths": [{"path": p, "views": paths[p]} for p in ranked(paths)[:limit]],
    }


def recount_series(events: list[Ev], site: str, first: date, last: date, hourly: bool) -> list:
    step = timedelta(hours=1) if hourly else timedelta(days=1)
    start = datetime.combine(first, time(), UTC)
    points = []
    while start < datetime.combine(last + timedelta(days=1), time(), UTC):
        bucket = [e for e in events if e.site == site and start <= e.ts < start + step]
        points.append(
            {
                "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "views": sum(e.kind == "page_view" for e in bucket),
                "unique_users": len({e.user for e in bucket}),
            }
        )
        start += step
    return points


def recount_breakdown(events: list[Ev], site: str, first: date, last: date, by: str, n: int):
    field = {"path": "path", "referrer": "ref", "event_type": "kind"}[by]
    groups: dict[str | None, list[Ev]] = defaultdict(list)
    for e in within(events, site, first, last):
        if by == "event_type" or e.kind == "page_view":
            groups[getattr(e, field)].append(e)
    counts = {value: len(found) for value, found in groups.items()}
    return [
        {"value": v, "events": counts[v], "unique_users": len({e.user for e in groups[v]})}
        for v in ranked(counts)[:n]
    ]


def recount_sites(events: list[Ev], only: set[str] | None = None) -> list[dict]:
    return [
        {
            "site_id": site,
            "first_date": min(e.ts.date() for e in mine).isoformat(),
            "last_date": max(e.ts.date() for e in mine).isoformat(),
            "total_views": sum(e.kind == "page_view" for e in mine),
        }
        for site in sorted({e.site for e in events}, key=str.encode)
        if only is None or site in only
        for mine in [[e for e in events if e.site == site]]
    ]


@pytest.fixture
async def events(database_url: str) -> list[Ev]:
    """The workload stored: one batch with in-batch resends, then a batch of resends only."""
    sent = workload()
    rng = random.Random(7)
    unique = dedup(sent)
    assert len(sent) > len(unique) > 1500
    assert len({(e.site, e.user) for e in unique}) > 1024  # users in a second bitmap chunk
    assert await save(database_url, [sent, rng.sample(unique, 40)]) == [len(unique), 0]
    return unique


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(settings)) as client:
        yield client


def fresh(answer: dict) -> dict:
    """The answer without its freshness fields, which are checked on the way."""
    as_of, lag, complete = answer.pop("as_of"), answer.pop("lag_entries"), answer.pop("complete")
    assert as_of is None or as_of.endswith("Z")
    assert isinstance(lag, int | None) and isinstance(complete, bool)
    return answer


def span(first: date = FIRST, last: date = LAST, **more) -> dict:
    return {"from": first.isoformat(), "to": last.isoformat(), **more}


async def get(client: httpx.AsyncClient, path: str, **params) -> dict:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_the_workload_is_stored_once_per_site_and_id(events, db) -> None:
    assert await db.fetchval("SELECT count(*) FROM events") == len(events)
    both = await db.fetchval("SELECT count(DISTINCT site_id) FROM events WHERE event_id = 'e0'")
    assert both == 2


async def test_range_totals_count_each_user_once(client, events) -> None:
    for site, first, last, limit in [
        ("a.example", FIRST, LAST, 10),
        ("b.example", FIRST, LAST, 3),
        ("a.example", DAYS[2], DAYS[6], 2),
        (TIES, FIRST, LAST, 10),
        ("nobody", FIRST, LAST, 10),
    ]:
        answer = fresh(await get(client, "/stats", site_id=site, **span(first, last, limit=limit)))
        assert answer == {
            "site_id": site,
            "from": first.isoformat(),
            "to": last.isoformat(),
            **recount_totals(events, site, first, last, limit),
        }
    whole = (await get(client, "/stats", site_id="a.example", **span()))["unique_users"]
    days = (await get(client, "/stats/timeseries", site_id="a.example", **span()))["points"]
    assert sum(p["unique_users"] for p in days) > whole  # a sum of days would be wrong
    top = await get(client, "/stats", site_id=TIES, **span())
    assert [p["path"] for p in top["top_paths"]] == ["/Zeta", "/alpha", "/zeta"]  # byte order
    one = fresh(await get(client, "/stats", site_id="a.example", date=DAYS[0].isoformat()))
    assert "from" not in one and one.pop("date") == DAYS[0].isoformat()
    assert one == {
        "site_id": "a.example",
        **recount_totals(events, "a.example", DAYS[0], DAYS[0], 10),
    }


@pytest.mark.parametrize("interval", ["day", "hour"])
async def test_timeseries_has_every_bucket_in_order(client, events, interval: str) -> None:
    first, last = FIRST - timedelta(days=1), LAST + timedelta(days=1)
    for site in ("a.example", "b.example", TIES):
        answer = fresh(
            await get(
                client, "/stats/timeseries", site_id=site, interval=interval, **span(first, last)
            )
        )
        points = recount_series(events, site, first, last, hourly=interval == "hour")
        assert len(points) == 12 * (24 if interval == "hour" else 1)
        assert answer == {
            "site_id": site,
            "from": first.isoformat(),
            "to": last.isoformat(),
            "interval": interval,
            "points": points,
        }
    assert points[0]["start"] == "2026-11-09T00:00:00Z" and points[-1]["views"] == 0
    hourly = await get(client, "/stats/timeseries", site_id="a.example", interval="hour", **span())
    quiet = [p for p in hourly["points"] if p["start"][11:13] in ("03", "17")]
    assert quiet and all(p["views"] == p["unique_users"] == 0 for p in quiet)
    daily = await get(client, "/stats/timeseries", site_id="b.example", **span())  # day default
    clicks = daily["points"][-1]
    assert daily["interval"] == "day" and clicks["views"] == 0 and clicks["unique_users"] > 0


async def test_hour_series_cover_at_most_31_days(client, events) -> None:
    month = span(DAYS[0], DAYS[0] + timedelta(days=30), site_id="a.example", interval="hour")
    assert len((await get(client, "/stats/timeseries", **month))["points"]) == 31 * 24
    month["to"] = (DAYS[0] + timedelta(days=31)).isoformat()
    response = await client.get("/stats/timeseries", params=month)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "to"]


@pytest.mark.parametrize("by", ["path", "referrer", "event_type"])
async def test_breakdown_rows_are_exact_and_ordered(client, events, by: str) -> None:
    for site, first, last, limit in [
        ("a.example", FIRST, LAST, 10),
        ("b.example", DAYS[1], DAYS[8], 2),
        (TIES, FIRST, LAST, 10),
        (TIES, FIRST, DAYS[2], 10),
    ]:
        answer = fresh(
            await get(
                client, "/stats/breakdown", site_id=site, by=by, **span(first, last, limit=limit)
            )
        )
        assert answer == {
            "site_id": site,
            "from": first.isoformat(),
            "to": last.isoformat(),
            "by": by,
            "rows": recount_breakdown(events, site, first, last, by, limit),
        }
    ties = (await get(client, "/stats/breakdown", site_id=TIES, by=by, **span()))["rows"]
    expected = {
        "path": [("/Zeta", 2, 1), ("/alpha", 2, 2), ("/zeta", 2, 2)],
        "referrer": [("https://A.example/", 2, 2), ("https://b.example/", 2, 1), (None, 2, 2)],
        "event_type": [("page_view", 6, 4), ("click", 1, 1)],
    }[by]
    assert [(r["value"], r["events"], r["unique_users"]) for r in ties] == expected


async def test_realtime_counts_the_last_minutes(client, database_url: str) -> None:
    now = datetime.now(UTC)
    live = [
        ("page_view", "u1", timedelta(seconds=-20)),
        ("page_view", "u2", timedelta(minutes=-3)),
        ("click", "u3", timedelta(minutes=-4)),
        ("page_view", "u2", timedelta(minutes=-4, seconds=-30)),
        ("page_view", "u4", timedelta(minutes=-5, seconds=-40)),  # just outside 5 minutes
        ("page_view", "u5", timedelta(minutes=-61)),  # just outside 60 minutes
        ("page_view", "u6", timedelta(minutes=3)),  # ahead of now: not yet
    ]
    sent = [
        Ev("live", kind, "/", user, now + ago, None, f"r{i}")
        for i, (kind, user, ago) in enumerate(live)
    ]
    sent.append(Ev("elsewhere", "page_view", "/", "u9", now, None, "r0"))
    await save(database_url, [sent])
    for minutes, views, users in [(1, 1, 1), (5, 3, 3), (6, 4, 4), (60, 4, 4)]:
        answer = fresh(await get(client, "/stats/realtime", site_id="live", minutes=minutes))
        assert answer == {
            "site_id": "live",
            "minutes": minutes,
            "views": views,
            "unique_users": users,
        }
        window = [
            e
            for e in sent
            if e.site == "live" and -minutes * 60 < (e.ts - now).total_seconds() <= 0
        ]
        assert (views, users) == (
            sum(e.kind == "page_view" for e in window),
            len({e.user for e in window}),
        )
    assert (await get(client, "/stats/realtime", site_id="live"))["minutes"] == 5
    for bad in ("0", "61"):
        assert (
            await client.get("/stats/realtime", params={"site_id": "live", "minutes": bad})
        ).status_code == 422


async def test_sites_in_byte_order_and_per_token(settings: Settings, events) -> None:
    locked = settings.model_copy(update={"stats_tokens": TOKENS})
    async with serve(create_app(locked)) as client:
        for token, only in [("all-token", None), ("scoped-token", {"a.example", TIES})]:
            response = await client.get("/sites", headers={"authorization": f"Bearer {token}"})
            assert response.status_code == 200
            assert response.json() == {"sites": recount_sites(events, only)}
    assert [s["site_id"] for s in recount_sites(events)] == [TIES, "a.example", "b.example"]
    assert recount_sites(events)[2]["last_date"] == LAST.isoformat()  # a day of clicks only


STATS_ROUTES = [
    ("/stats", {}),
    ("/stats", span()),
    ("/stats/timeseries", span()),
    ("/stats/breakdown", span(by="path")),
    ("/stats/realtime", {}),
    ("/stats/ingest", {}),
]


async def test_tokens_guard_every_stats_route(settings: Settings, events) -> None:
    locked = settings.model_copy(update={"stats_tokens": TOKENS})
    async with serve(create_app(locked)) as client:
        for path, params in STATS_ROUTES:
            query = {"site_id": "b.example", **params}
            bare = await client.get(path, params=query)
            assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer", path
            for token, status in [("wrong", 401), ("scoped-token", 403), ("all-token", 200)]:
                got = await client.get(
                    path, params=query, headers={"authorization": f"Bearer {token}"}
                )
                assert got.status_code == status, (path, token, got.text)
            mine = {**query, "site_id": "a.example"}
            ok = await client.get(
                path, params=mine, headers={"authorization": "Bearer scoped-token"}
            )
            assert ok.status_code == 200, path
        assert (await client.get("/sites")).status_code == 401


BAD = [
    ("/stats", span(DAYS[3], DAYS[2]), "from"),
    ("/stats/timeseries", span(DAYS[3], DAYS[2]), "from"),
    ("/stats/breakdown", span(DAYS[3], DAYS[2], by="path"), "from"),
    ("/stats/breakdown", span(by="browser"), "by"),
    ("/stats/breakdown", span(), "by"),  # by is required
    ("/stats/breakdown", span(by="path", bogus="1"), "bogus"),
    ("/stats/timeseries", span(interval="week"), "interval"),
    ("/stats", span(fromm="2026-11-10"), "fromm"),
    ("/stats", {"date": DAYS[0].isoformat(), "from": DAYS[0].isoformat()}, "date"),
    ("/stats", span(DAYS[0], date(2027, 11, 30)), "to"),  # 386 days > 366
    ("/stats/breakdown", span(DAYS[0], date(2027, 11, 30), by="path"), "to"),
]


async def test_bad_parameters_are_422_naming_them(client) -> None:
    for path, params, name in BAD:
        response = await client.get(path, params={"site_id": "a.example", **params})
        assert response.status_code == 422, (path, params, response.text)
        assert ["query", name] in [e["loc"] for e in response.json()["detail"]], (path, params)


async def test_the_longest_range_is_a_setting(settings: Settings) -> None:
    async with serve(create_app(settings.model_copy(update={"max_range_days": 7}))) as client:
        for path, extra in [
            ("/stats", {}),
            ("/stats/timeseries", {}),
            ("/stats/breakdown", {"by": "path"}),
        ]:
            week = {"site_id": "a.example", **span(DAYS[0], DAYS[6]), **extra}
            assert (await client.get(path, params=week)).status_code == 200, path
            longer = await client.get(path, params={**week, "to": DAYS[7].isoformat()})
            assert longer.status_code == 422 and longer.json()["detail"][0]["loc"] == [
                "query",
                "to",
            ]


async def test_every_answer_says_how_fresh_it_is(client, events) -> None:
    today = datetime.now(UTC).date()
    for path, params in STATS_ROUTES:
        answer = await get(client, path, site_id="a.example", **params)
        assert answer["as_of"].endswith("Z") and answer["lag_entries"] == 0, path
        if params.get("to") == LAST.isoformat():
            assert answer["complete"] is True, path  # a past range, nothing queued
    for path, extra in [
        ("/stats", {}),
        ("/stats/timeseries", {}),
        ("/stats/breakdown", {"by": "path"}),
    ]:
        until_today = await get(client, path, site_id="a.example", **span(FIRST, today), **extra)
        assert until_today["complete"] is False, path  # today is not over
        as_of = datetime.fromisoformat(until_today["as_of"])
        assert abs(as_of - datetime.now(UTC)) < timedelta(seconds=30)


ROUTES = [
    ("/stats", span(site_id="a.example", limit=3), "top_paths"),
    ("/stats", {"site_id": "a.example", "date": DAYS[0].isoformat()}, "top_paths"),
    ("/stats/timeseries", span(site_id="a.example", interval="hour"), "points"),
    ("/stats/timeseries", span(site_id="b.example"), "points"),
    ("/stats/breakdown", span(site_id=TIES, by="referrer"), "rows"),
    ("/stats/breakdown", span(site_id="a.example", by="event_type"), "rows"),
    ("/stats/realtime", {"site_id": "a.example"}, None),
    ("/stats/ingest", {"site_id": "a.example", "date": DAYS[0].isoformat()}, None),
    ("/sites", {}, "sites"),
]


def as_cell(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def flat(data: dict, prefix: str = "") -> dict:
    found: dict = {}
    for key, value in data.items():
        found.update(flat(value, f"{key}.") if isinstance(value, dict) else {prefix + key: value})
    return found


@pytest.mark.parametrize(("path", "params", "rows"), ROUTES)
async def test_csv_is_the_json_answer(client, events, path: str, params: dict, rows) -> None:
    for _ in range(10):  # the JSON read before and after: the same freshness, so the CSV's too
        before = await get(client, path, **params)
        by_format = await client.get(path, params={**params, "format": "csv"})
        by_accept = await client.get(path, params=params, headers={"accept": "text/csv"})
        assert (by_format.status_code, by_accept.status_code) == (200, 200), by_format.text
        if before == await get(client, path, **params):
            break
    for response in (by_format, by_accept):
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        table = list(csv.reader(io.StringIO(response.text, newline="")))
        answer = dict(before)
        if "complete" in answer:
            assert response.headers["x-queueflow-as-of"] == as_cell(answer["as_of"])
            assert response.headers["x-queueflow-lag"] == as_cell(answer["lag_entries"])
            assert response.headers["x-queueflow-complete"] == as_cell(answer["complete"])
            fresh(answer)
        lines = answer[rows] if rows else [flat(answer)]
        assert lines, path  # every route here has something to say
        assert table == [list(lines[0]), *([as_cell(v) for v in line.values()] for line in lines)]
    if params.get("by") == "referrer":
        assert table[-1][0] == ""  # the null referrer, an empty cell
    json_anyway = await client.get(
        path, params={**params, "format": "json"}, headers={"accept": "text/csv"}
    )
    assert json_anyway.headers["content-type"] == "application/json"


async def test_cors_only_for_the_listed_origins(settings: Settings) -> None:
    preflight = {
        "Origin": "https://dash.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    async with serve(create_app(settings)) as closed:
        assert (
            "access-control-allow-origin"
            not in (await closed.options("/sites", headers=preflight)).headers
        )
        answer = await closed.get("/sites", headers={"Origin": "https://dash.example"})
        assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
    listed = settings.model_copy(update={"reporting_cors_origins": "https://dash.example"})
    async with serve(create_app(listed)) as client:
        allowed = await client.options("/stats", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://dash.example"
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        assert allowed.headers["access-control-max-age"] == "86400"
        answer = await client.get("/sites", headers={"Origin": "https://dash.example"})
        assert answer.headers["access-control-allow-origin"] == "https://dash.example"
        assert "x-queueflow-as-of" in answer.headers["access-control-expose-headers"].lower()
        other = await client.get("/sites", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_a_missing_token_is_401_before_any_parameter_is_judged(settings: Settings) -> None:
    locked = settings.model_copy(update={"stats_tokens": "all-sites-token"})
    async with serve(create_app(locked)) as client:
        for route, params in [
            ("/stats", {"site_id": "a", "from": "2026-01-05", "to": "2026-01-01"}),
            ("/stats/timeseries", {"site_id": "a", "interval": "hour", "from": "2025-01-01"}),
        ]:
            answer = await client.get(route, params=params)
            assert answer.status_code == 401, (route, answer.text)


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        ("text/csv", "text/csv"),
        ("text/csv;q=0, application/json", "application/json"),
        ("application/json;q=0.5, text/csv;q=0.9", "text/csv"),
        ("text/csv;q=0.4, */*", "application/json"),
        ("text/*", "text/csv"),
        ("application/json, text/csv", "text/csv"),  # listed, as high as JSON
        ("*/*", "application/json"),
    ],
)
async def test_accept_is_read_with_its_q_values(client, accept: str, media: str) -> None:
    answer = await client.get("/sites", headers={"Accept": accept})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith(media)
    assert answer.headers["vary"] == "Accept"
