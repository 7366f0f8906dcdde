"""Known crawlers, told apart by their User-Agent with the maintained pattern list of the
`crawler-user-agents` package (github.com/monperrus/crawler-user-agents, MIT).

Generic HTTP client libraries and command-line tools are in that list too, but for QueueFlow
they are servers sending their own events (README "On a web page", "Bots"): their patterns are
left out, by name, below. A user agent is matched once per process and remembered: the list's
~1,500 patterns take about 0.2 ms per new user agent, a remembered one a dictionary lookup.
Only its first MATCHED_BYTES are matched and remembered (crawlers name themselves early; a
16 KB invented user agent would otherwise cost ~25 ms and pin 16 KB in the cache).
"""

from __future__ import annotations

import re
from functools import lru_cache

import crawleruseragents

# Patterns of the list that name general-purpose HTTP clients, not crawlers. The test checks
# each is still in the list, so a renamed pattern is noticed.
HTTP_CLIENTS = frozenset(
    {
        "^curl",
        "[wW]get",
        "^HTTPie\\/",
        "python-requests",
        "Python-urllib",
        "httpx",
        "aiohttp",
        "Go-http-client",
        "okhttp",
        "AHC\\/",
        "^Apache-HttpClient",
        "HttpUrlConnection",
        "axios",
        "node-fetch",
        "sindresorhus\\/got",
        "libwww-perl",
        "lwp-trivial",
        "^PHP-Curl-Class",
    }
)
PATTERNS = [
    entry["pattern"]
    for entry in crawleruseragents.CRAWLER_USER_AGENTS_DATA
    if entry["pattern"] not in HTTP_CLIENTS
]
# One alternation is several times slower than groups of a few dozen (each group's
# alternatives are tried together at every position); the package groups them the same way.
_GROUP = 25
_MATCHERS = [
    re.compile("|".join(PATTERNS[i : i + _GROUP])) for i in range(0, len(PATTERNS), _GROUP)
]
CACHED_USER_AGENTS = 8192
MATCHED_BYTES = 512


def is_bot(user_agent: bytes) -> bool:
    """Whether this User-Agent header is a known crawler's (an absent one is not)."""
    return _is_bot(user_agent[:MATCHED_BYTES])


@lru_cache(maxsize=CACHED_USER_AGENTS)
def _is_bot(user_agent: bytes) -> bool:
    text = user_agent.decode("latin-1")  # headers are bytes; patterns are ASCII
    return any(matcher.search(text) for matcher in _MATCHERS)
