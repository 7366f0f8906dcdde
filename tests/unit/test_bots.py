"""Known crawlers by their User-Agent, from the maintained list; browsers and generic HTTP
clients never."""

# ruff: noqa: E501 (user agents are quoted whole)

from __future__ import annotations

import crawleruseragents
import pytest

from queueflow.ingest.bots import HTTP_CLIENTS, MATCHED_BYTES, PATTERNS, _is_bot, is_bot

CRAWLERS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Scrapy/2.11.0 (+https://scrapy.org)",
]
BROWSERS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36",
    "Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.70",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
]
HTTP_CLIENT_AGENTS = [
    "curl/8.5.0",
    "python-requests/2.32.3",
    "python-httpx/0.27.2",
    "Python-urllib/3.11",
    "Python/3.11 aiohttp/3.10.5",
    "Go-http-client/1.1",
    "Go-http-client/2.0",
    "okhttp/4.12.0",
    "axios/1.7.7",
    "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
    "Wget/1.21.4",
    "HTTPie/3.2.4",
    "Apache-HttpClient/4.5.14 (Java/17.0.9)",
]


@pytest.mark.parametrize("agent", CRAWLERS)
def test_known_crawlers_are_bots(agent: str) -> None:
    assert is_bot(agent.encode())


@pytest.mark.parametrize("agent", BROWSERS)
def test_browsers_are_not(agent: str) -> None:
    assert not is_bot(agent.encode())


@pytest.mark.parametrize("agent", HTTP_CLIENT_AGENTS)
def test_generic_http_clients_are_servers_sending_events(agent: str) -> None:
    assert not is_bot(agent.encode())
    assert crawleruseragents.is_crawler(agent)  # the list itself would have dropped it


def test_every_excluded_pattern_is_still_in_the_list() -> None:
    listed = {entry["pattern"] for entry in crawleruseragents.CRAWLER_USER_AGENTS_DATA}
    assert listed >= HTTP_CLIENTS
    assert len(PATTERNS) == len(listed) - len(HTTP_CLIENTS) > 1000


def test_a_user_agent_is_matched_once_then_remembered() -> None:
    agent = b"Mozilla/5.0 (X11; Linux x86_64) QueueFlowTest/1.0"
    is_bot(agent)
    before = _is_bot.cache_info().hits
    assert is_bot(agent) is False
    assert _is_bot.cache_info().hits == before + 1


def test_only_the_start_of_a_huge_user_agent_is_matched_and_remembered() -> None:
    browser = BROWSERS[0].encode()
    padded = browser + b" x" * 8000  # 16 KB: what the header limit lets through
    assert is_bot(padded) is False
    assert is_bot(browser[:100] + b"Googlebot/2.1" + b" x" * 8000)  # named early: found
    before = _is_bot.cache_info().currsize
    for n in range(50):  # distinct tails, one remembered prefix
        is_bot(padded + b"%d" % n)
    assert _is_bot.cache_info().currsize <= before + 1 and MATCHED_BYTES == 512
