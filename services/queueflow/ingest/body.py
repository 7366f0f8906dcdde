"""Reading a request body as ingest accepts it: the media type and content coding it may have,
the size limit applied while reading (before any parsing) and again to the inflated bytes."""

from __future__ import annotations

import zlib

from starlette.types import Receive

JSON_TYPES = (b"application/json", b"text/plain")  # text/plain: navigator.sendBeacon(string)
MEDIA_TYPE_ERROR = "Content-Type must be application/json or text/plain (charset utf-8, if any)"
ENCODING_ERROR = "Content-Encoding must be gzip or identity"
TRANSFER_ERROR = "Transfer-Encoding may only be chunked"
QUERY_ERROR = "POST /event and /events take no query parameters"


class TooLarge(Exception):
    pass


class Disconnected(Exception):
    """The client went away before sending its whole body: nothing may be enqueued."""


class BadGzip(Exception):
    """A body sent as gzip that does not inflate (400)."""


def media_type_ok(value: bytes | None) -> bool:
    """JSON or text/plain, with no charset but UTF-8 (`;charset=UTF-8`, as sendBeacon sends
    it, is fine). A missing Content-Type is refused like any other."""
    if value == b"application/json":  # the usual case, parsed no further
        return True
    if value is None:
        return False
    media, _, params = value.partition(b";")
    if media.strip().lower() not in JSON_TYPES:
        return False
    for param in params.split(b";"):
        name, _, given = param.partition(b"=")
        if name.strip().lower() == b"charset" and given.strip().strip(b'"').lower() != b"utf-8":
            return False
    return True


def content_coding(value: bytes) -> bytes | None:
    """b"gzip", b"" for identity (or none), None for anything else (br, deflate, unknown,
    or gzip twice)."""
    codings = [c.strip().lower() for c in value.split(b",")]
    codings = [c for c in codings if c and c != b"identity"]
    if not codings:
        return b""
    if codings in ([b"gzip"], [b"x-gzip"]):
        return b"gzip"
    return None


# Concatenated gzip members are valid gzip; a client has no use for more than a few, and each
# costs a copy of the rest of the body.
MAX_GZIP_MEMBERS = 16


def gunzip(data: bytes, limit: int) -> bytes:
    """Inflate a gzip body (every member of it), stopping at limit + 1 bytes of output: a
    small body that inflates to gigabytes costs no more than one at the limit."""
    out: list[bytes] = []
    size = 0
    while data:
        if len(out) == MAX_GZIP_MEMBERS:
            raise BadGzip(f"more than {MAX_GZIP_MEMBERS} gzip members")
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing only
        try:
            chunk = inflater.decompress(data, limit - size + 1)
        except zlib.error as exc:
            raise BadGzip(str(exc)) from None
        size += len(chunk)
        if size > limit:
            raise TooLarge
        if not inflater.eof:  # under the output cap, so all input was used: it ended early
            raise BadGzip("the gzip stream is truncated")
        out.append(chunk)
        data = inflater.unused_data
    return b"".join(out)


async def read_body(receive: Receive, limit: int) -> bytes:
    """Read the body, giving up as soon as it passes the limit (before any parsing)."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)
