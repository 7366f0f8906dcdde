"""Duplicate keys in a JSON body, which msgspec (like most parsers) reads as the last value.

Without escaped backslashes every `"` in a body delimits a string, so a body holds exactly as
many as its decoded events' keys and string values need: one C-speed count settles nearly
every body (`structural_quotes`), and only a mismatch (a duplicate, an explicit null, an
unusual escape) pays for the exact pass with `json.loads` (`duplicate_keys`).
"""

from __future__ import annotations

import json
import re
from typing import Any

# (index of the event, location within it, message) for each problem found.
Found = list[tuple[int, list[str | int], str]]

_QUOTE_ESCAPES = re.compile(rb'\\[\\"]')


def structural_quotes(body: bytes, escaped: bool) -> int:
    """The `"` that delimit strings: all of them, less the escaped ones. Matched left to
    right, `\\\\` and `\\"` pair up exactly as JSON reads its escapes (a backslash always
    starts one, and no other escape holds a backslash or a quote)."""
    if not escaped:
        return body.count(b'"')
    return body.count(b'"') - _QUOTE_ESCAPES.findall(body).count(b'\\"')


class _Pairs(list):
    """A JSON object as json.loads saw it: its (key, value) pairs, duplicates kept."""


def duplicate_keys(body: bytes, batch: bool) -> Found:
    """Keys repeated within an event, or within its properties (the exact, slower pass)."""

    def keep(text: str) -> str:
        return text

    try:
        tree = json.loads(
            body, object_pairs_hook=_Pairs, parse_int=keep, parse_float=keep, parse_constant=keep
        )
    except (ValueError, RecursionError):  # msgspec read it; json should too
        return []
    found: Found = []
    for index, pairs in enumerate(tree if batch else [tree]):
        if not isinstance(pairs, _Pairs):
            continue
        for key in _repeated(pairs):
            found.append((index, [key], f"duplicate key `{key}`"))
        for key, value in pairs:
            if key == "properties" and isinstance(value, _Pairs):
                for name in _repeated(value):
                    found.append((index, ["properties", name], f"duplicate property `{name}`"))
    return found


def _repeated(pairs: list[tuple[str, Any]]) -> list[str]:
    seen: set[str] = set()
    repeated: list[str] = []
    for key, _ in pairs:
        if key in seen and key not in repeated:
            repeated.append(key)
        seen.add(key)
    return repeated
