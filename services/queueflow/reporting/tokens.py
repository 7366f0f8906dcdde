"""Who may read the numbers: QUEUEFLOW_STATS_TOKENS (README "Reporting API"; the list's form
in core/stats_tokens.py). A presented token is compared with every configured one in
constant time (digests of equal length, no early exit), so timing says nothing about how
much of a token was right. Tokens are never logged: they travel in the Authorization header,
which no log line carries."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import HTTPException

from queueflow.core.stats_tokens import parse_tokens


@dataclass(frozen=True, slots=True)
class Access:
    """What one request may read: every site (sites None) or those listed."""

    sites: frozenset[str] | None

    def site(self, site_id: str) -> None:
        """403 unless this request may read `site_id`."""
        if self.sites is not None and site_id not in self.sites:
            raise HTTPException(403, detail="This token does not cover that site")


EVERY_SITE = Access(None)


class StatsTokens:
    def __init__(self, spec: str | None) -> None:
        grants = parse_tokens(spec) if spec else []
        self.open = not grants
        self._grants = [(_digest(token), sites) for token, sites in grants]

    def access(self, authorization: str | None) -> Access:
        """The access an Authorization header gives; 401 (with WWW-Authenticate) without a
        known bearer token, unless reporting is open."""
        if self.open:
            return EVERY_SITE
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(
                401, detail="A bearer token is needed", headers={"WWW-Authenticate": "Bearer"}
            )
        presented = _digest(token.strip())
        found: frozenset[str] | bool | None = False
        for digest, sites in self._grants:  # every one, whatever matched: constant time
            if hmac.compare_digest(digest, presented) and found is False:
                found = sites
        if found is False:
            raise HTTPException(
                401,
                detail="Unknown token",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return Access(found)  # type: ignore[arg-type]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
