"""Query strings for property-based tests of the services' query parsing: pairs of keys and
values (text or raw bytes), each percent-encoded or typed as is."""

from __future__ import annotations

from urllib.parse import quote, quote_from_bytes

from hypothesis import strategies as st


def encode(part: str | bytes, raw: bool) -> str:
    """Percent-encoded, or (raw) as typed, with `&`, `=`, `+`, `%` and `;` left for the parser."""
    if isinstance(part, bytes):
        return quote_from_bytes(part, safe="")
    return quote(part, safe="&=+%;" if raw else "")


def query_strings(
    keys: st.SearchStrategy[str], values: st.SearchStrategy[str]
) -> st.SearchStrategy[str]:
    return st.lists(
        st.tuples(keys | st.binary(max_size=8), values | st.binary(max_size=300), st.booleans()),
        max_size=6,
    ).map(lambda pairs: "&".join(f"{encode(k, r)}={encode(v, r)}" for k, v, r in pairs))
