"""uvicorn's httptools protocol with the limits a server facing the internet needs.

uvicorn bounds neither the size of a request's headers nor the time a client takes to send
them or its body, so an idle, slow (slowloris) or oversized client holds a connection and its
buffers forever. This subclass adds, per connection:

- a header size limit: more than `max_header_bytes` before the headers end gets a 431 and the
  connection closes, having fed the parser about that many bytes and no more;
- a header timeout: from the connection's opening, or on keep-alive from the first byte of
  the next request (the idle time before that is uvicorn's keep-alive timeout), to the end of
  the headers; then a 408 (or a silent close if nothing came) and the connection closes;
- a body timeout: from the end of the headers to the end of the body; then the connection
  closes and the app's receive() returns `http.disconnect`.

It also answers a client that half-closes after a complete request, and never answers an
HTTP/1.0 request chunked. A connection has one timer at a time (headers, body or lingering),
armed at the connection's opening and then only when a read leaves a request unfinished: a
request that arrives whole in one read, the usual case, arms none, and nothing runs per byte.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# What the connection waits for from the client.
IDLE = 0  # the next request (uvicorn's keep-alive timer runs once the response is sent)
HEADERS = 1  # the rest of a request's headers
BODY = 2  # the rest of its body
REFUSED = 3  # nothing: a 431/408 was sent; reads are discarded until the connection closes

# After a 431/408 the server keeps reading (and dropping) what the client still sends for a
# moment: closing a socket with unread data resets it, and the client may lose the answer.
LINGER_S = 1.0


def _response(status: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" % status


TOO_LARGE = _response(b"431 Request Header Fields Too Large")
TIMED_OUT = _response(b"408 Request Timeout")


_base = HttpToolsProtocol  # called directly on the per-request paths: cheaper than super()


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    # Set by `limited_protocol` on a subclass per server.
    max_header_bytes = 16_384
    header_timeout_s = 10.0
    body_timeout_s = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._phase = HEADERS
        self._header_bytes = 0  # bytes fed to the parser since the last headers ended
        self._timer: asyncio.TimerHandle | None = None
        self._arm()  # a connection that never sends anything is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == BODY:
            _base.data_received(self, data)
        elif self._phase == REFUSED:
            return
        elif len(data) > self.max_header_bytes - self._header_bytes:
            self._past_header_limit(data)
            return
        else:
            self._phase = HEADERS  # when IDLE, these bytes begin the next request
            self._header_bytes += len(data)
            _base.data_received(self, data)
        if self._timer is None and self._phase != IDLE:
            self._arm()  # this read left a request unfinished

    def _past_header_limit(self, data: bytes) -> None:
        # Feed only what the limit leaves room for. on_headers_complete resets the count: if it
        # ran, the headers fit and the rest of `data` is body (or the next request).
        room = self.max_header_bytes - self._header_bytes
        self._phase = HEADERS
        self._header_bytes = self.max_header_bytes
        super().data_received(data[:room])
        if self.transport.is_closing():
            return  # uvicorn answered a malformed request with its 400
        if self._header_bytes == self.max_header_bytes:
            self._refuse(TOO_LARGE)
        else:
            self.data_received(data[room:])

    def eof_received(self) -> bool:
        # A client may shut down its sending side (SHUT_WR) once its request is complete: keep
        # the connection open for the response (and any pipelined ones), then close it.
        cycle = self.cycle
        if self._phase != IDLE or cycle is None or cycle.response_complete:
            return False  # nothing to answer, or the request can never be completed
        newest = self.pipeline[0][0] if self.pipeline else cycle
        newest.keep_alive = False  # uvicorn closes after that response
        return True

    # Parser callbacks: the phase follows the request.
    def on_headers_complete(self) -> None:
        _base.on_headers_complete(self)
        self._phase = BODY
        self._header_bytes = 0
        if self._timer is not None:
            self._disarm()
        cycle = self.cycle
        if self.scope["http_version"] == "1.0" and cycle is not None and cycle.scope is self.scope:
            # The request's task has not started yet: it will call the app with this send.
            cycle.send = _length_delimited(cycle.send, self.scope)  # type: ignore[method-assign]

    def on_message_complete(self) -> None:
        _base.on_message_complete(self)
        self._phase = IDLE
        if self._timer is not None:
            self._disarm()

    def handle_websocket_upgrade(self) -> None:
        self._phase = IDLE  # the websocket protocol owns the connection from here
        self._disarm()
        super().handle_websocket_upgrade()

    # The one timer.
    def _arm(self) -> None:
        delay = self.body_timeout_s if self._phase == BODY else self.header_timeout_s
        self._timer = self.loop.call_later(delay, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._phase == HEADERS and self._header_bytes:
            self._refuse(TIMED_OUT)
        elif not self.transport.is_closing():
            self.transport.close()  # idle, a slow body (the app sees a disconnect), or lingered

    def _refuse(self, response: bytes) -> None:
        self._phase = REFUSED
        self._disarm()
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is under way: a second one would corrupt it
            return
        self.transport.write(response)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._timer = self.loop.call_later(LINGER_S, self._timed_out)


def limited_protocol(
    *, max_header_bytes: int, header_timeout_s: float, body_timeout_s: float
) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for one server's limits (uvicorn instantiates it per connection)."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {
            "max_header_bytes": max_header_bytes,
            "header_timeout_s": header_timeout_s,
            "body_timeout_s": body_timeout_s,
        },
    )


def _length_delimited(send: Any, scope: Any) -> Any:
    """send() for an HTTP/1.0 request. uvicorn sends a response without Content-Length
    chunked, which HTTP/1.0 does not have: such a response is held until its body is complete
    and sent with its length (answers here are small, and HTTP/1.0 clients rare)."""
    start: dict | None = None
    chunks: list[bytes] = []

    async def length_delimited_send(message: dict) -> None:
        nonlocal start
        if start is None and message["type"] == "http.response.start":
            if _needs_length(scope, message):
                start = message
                return
        elif start is not None and message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            length = (b"content-length", str(len(body)).encode())
            await send({**start, "headers": [*start.get("headers", ()), length]})
            message = {"type": "http.response.body", "body": body}
        await send(message)

    return length_delimited_send


def _needs_length(scope: Any, start: dict) -> bool:
    if scope["method"] == "HEAD" or start["status"] in (204, 304) or start["status"] < 200:
        return False
    return not any(
        name.lower() in (b"content-length", b"transfer-encoding")
        for name, _ in start.get("headers", ())
    )
