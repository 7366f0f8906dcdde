"""QUEUEFLOW_STATS_TOKENS: its form, and what a bearer token gives."""

from __future__ import annotations

import pytest
from fastapi import HTTPException

from queueflow.core.stats_tokens import all_sites_token, parse_tokens
from queueflow.reporting.tokens import StatsTokens


def test_the_list_form() -> None:
    assert parse_tokens("abc, s3cret=a.example|b.example") == [
        ("abc", None),
        ("s3cret", frozenset({"a.example", "b.example"})),
    ]
    for bad in ("", "a b", "x=", "x=a||b", ","):
        with pytest.raises(ValueError):
            parse_tokens(bad)
    assert all_sites_token("scoped=a.example,everything") == "everything"
    assert all_sites_token("scoped=a.example") is None and all_sites_token(None) is None


def status(tokens: StatsTokens, header: str | None) -> int | frozenset | None:
    try:
        return tokens.access(header).sites
    except HTTPException as exc:
        return exc.status_code


def test_bearer_tokens_and_their_scopes() -> None:
    tokens = StatsTokens("all-sites,one=a.example")
    assert status(tokens, "Bearer all-sites") is None  # every site
    assert status(tokens, "bearer one") == frozenset({"a.example"})
    for header in (None, "", "Bearer", "Bearer ", "Basic all-sites", "Bearer wrong", "all-sites"):
        assert status(tokens, header) == 401, header
    with pytest.raises(HTTPException) as refused:
        tokens.access("Bearer one").site("b.example")
    assert refused.value.status_code == 403
    tokens.access("Bearer one").site("a.example")
    with pytest.raises(HTTPException) as missing:
        tokens.access(None)
    assert missing.value.headers == {"WWW-Authenticate": "Bearer"}


def test_unset_is_open() -> None:
    assert StatsTokens(None).open and status(StatsTokens(None), None) is None
