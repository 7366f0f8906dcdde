"""The form of QUEUEFLOW_STATS_TOKENS, read by the settings (to refuse a malformed list at
start), by reporting (reporting/tokens.py) and by `queueflow smoke` (which reads with one).

A comma-separated list of `TOKEN` (every site) or `TOKEN=SITE|SITE|...` (only those sites).
"""

from __future__ import annotations


def parse_tokens(spec: str) -> list[tuple[str, frozenset[str] | None]]:
    """(token, sites or None for every site) for each entry; ValueError when malformed."""
    grants = []
    for entry in (e.strip() for e in spec.split(",")):
        token, scoped, sites = entry.partition("=")
        token = token.strip()
        if not token or any(c.isspace() for c in token):
            raise ValueError("each token must be non-empty, without spaces")
        names = frozenset(s.strip() for s in sites.split("|")) if scoped else None
        if names is not None and "" in names:
            raise ValueError(f"a scoped token lists its sites: TOKEN=SITE|SITE, not {entry!r}")
        grants.append((token, names))
    return grants


def all_sites_token(spec: str | None) -> str | None:
    """The first token that may read every site, if any."""
    return next((t for t, sites in parse_tokens(spec) if sites is None), None) if spec else None
