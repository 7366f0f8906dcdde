"""CORS answers for the routes web pages call."""

from __future__ import annotations

from queueflow.ingest.cors import Cors


def test_any_origin() -> None:
    cors = Cors("*")
    assert cors.allows(b"https://anything.example") and cors.allows(None)
    assert cors.headers(b"https://x.example") == [(b"access-control-allow-origin", b"*")]
    status, headers = cors.preflight(b"https://x.example", b"POST")
    assert status == 204
    assert dict(headers) == {
        b"access-control-allow-origin": b"*",
        b"access-control-allow-methods": b"POST",
        b"access-control-allow-headers": b"content-type",
        b"access-control-max-age": b"86400",
    }


def test_listed_origins_only_and_servers_always() -> None:
    cors = Cors("https://www.example.com,http://localhost:3000")
    assert cors.allows(b"https://www.example.com") and cors.allows(b"HTTPS://WWW.EXAMPLE.COM")
    assert cors.allows(b"http://localhost:3000")
    assert not cors.allows(b"https://evil.example") and not cors.allows(b"http://localhost:3001")
    assert not cors.allows(b"null")  # a sandboxed frame or a file: page
    assert cors.allows(None)  # no Origin: a server, never refused for CORS
    assert cors.headers(b"https://www.example.com") == [
        (b"access-control-allow-origin", b"https://www.example.com"),
        (b"vary", b"origin"),
    ]
    assert cors.headers(None) == [(b"vary", b"origin")]
    assert cors.preflight(b"https://evil.example", b"POST")[0] == 403
