"""A file served as it ships (the tracker, the dashboard's page, script and style): its body
and gzipped body made once, an ETag per representation, 304 on If-None-Match."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterable


class StaticAsset:
    def __init__(self, body: bytes, media_type: bytes) -> None:
        self.plain = body
        self.gzipped = gzip.compress(body, compresslevel=9, mtime=0)
        digest = hashlib.sha256(body).hexdigest()[:20].encode()
        # One ETag per representation: the gzipped body is other bytes.
        self.etags = {False: b'"%s"' % digest, True: b'"%s-gz"' % digest}
        self.media_type = media_type

    def answer(
        self, accept_encoding: bytes, if_none_match: bytes
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """(status, body, headers) for a GET with these request headers (b"" when absent):
        200 with the body (gzipped when accepted) or 304, with ETag and Vary."""
        zipped = accepts_gzip(accept_encoding)
        headers = [(b"vary", b"accept-encoding"), (b"etag", self.etags[zipped])]
        if matches(if_none_match, self.etags.values()):
            return 304, b"", headers
        headers.append((b"content-type", self.media_type))
        body = self.gzipped if zipped else self.plain
        if zipped:
            headers.append((b"content-encoding", b"gzip"))
        headers.append((b"content-length", b"%d" % len(body)))
        return 200, body, headers


def accepts_gzip(value: bytes) -> bool:
    """gzip (or *) listed in Accept-Encoding without q=0."""
    for item in value.lower().split(b","):
        coding, _, params = item.strip().partition(b";")
        if coding.strip() in (b"gzip", b"*"):
            q = params.strip().removeprefix(b"q=") if params.strip().startswith(b"q=") else b"1"
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


def matches(if_none_match: bytes, etags: Iterable[bytes]) -> bool:
    """If-None-Match names one of our ETags (weakly compared, as RFC 9110 says), or is *."""
    tags = {tag.strip().removeprefix(b"W/") for tag in if_none_match.split(b",")}
    return b"*" in tags or any(etag in tags for etag in etags)
