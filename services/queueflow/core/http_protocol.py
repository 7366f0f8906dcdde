"""uvicorn's httptools protocol with the limits a server facing the internet needs.

uvicorn bounds neither the size of a request's headers nor the time a client takes to send
them or its body or to take its answers, nor how many pipelined requests it parses ahead, so
an idle, slow (slowloris), oversized or non-reading client holds a connection and its buffers
forever. This subclass adds, per connection:

- a header size limit: more than `max_header_bytes` before the headers end gets a 431 and the
  connection closes, having fed the parser about that many bytes and no more;
- a header timeout: from the connection's opening, or on keep-alive from the first byte of
  the next request (the idle time before that is uvicorn's keep-alive timeout), to the end of
  the headers; then a 408 (or a silent close if nothing came) and the connection closes;
- a body timeout: from the end of the headers to the end of the body; then the connection
  closes and the app's receive() returns `http.disconnect`;
- a send timeout (`send_timeout_s`, the body timeout's setting): once the kernel's socket
  buffer is full (the write buffer's high-water mark is 0, so the transport calls
  `pause_writing` as soon as any output waits in user space), the client has that long to take
  what waits; otherwise the connection is reset, dropping what waits here and in the kernel,
  and the app's sends return. A response written at once must be taken within it (2 MB in
  30 s: 68 KB/s); an app that sends in parts gets it anew for each part.
- bounded pipelining: at most `max_pipelined` requests are parsed ahead of the one being
  answered. A request has at least 18 bytes and two LFs, so a read shorter than 18 times the
  queue's room, or with fewer than twice that many LFs, is parsed whole (the usual case: one
  request per read); a longer one is fed in slices that cannot overfill the queue, and what is
  left once it is full is held (one read at most) with reading paused, then parsed, before
  anything more is read, once the queue is down to half. The kernel's socket buffers push back
  on the client. uvicorn pauses and resumes reading itself (while a request is queued, while a
  body waits for the app): while something is held, its resume_reading parses that instead.

It also answers a client that half-closes after a complete request, never answers an HTTP/1.0
request chunked, and tells the app answering that the connection is lost (uvicorn tells only
the newest request: with another queued behind it, the app would write on a closed transport,
which uvloop refuses with an error). A connection has one read timer at a time (headers, body
or lingering), armed at the connection's opening and then only when a read leaves a request
unfinished, and a send timer while its output waits: a request that arrives whole in one read
and whose answer fits the socket buffer, the usual case, arms neither, and nothing in Python
runs per byte (a read of 288 bytes or more has its LFs counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
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
NO_LINGER = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection


def _response(status: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" % status


TOO_LARGE = _response(b"431 Request Header Fields Too Large")
TIMED_OUT = _response(b"408 Request Timeout")

# A request has at least MIN_REQUEST bytes and two LFs (llhttp wants CRLFs), as in
# b"GET / HTTP/1.1\r\n\r\n".
MIN_REQUEST = 18
LF = b"\n"
COUNT_BYTES = 4096  # up to this, counting LFs is cheaper than finding them one by one


_base = HttpToolsProtocol  # called directly on the per-request paths: cheaper than super()


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    # Set by `limited_protocol` on a subclass per server.
    max_header_bytes = 16_384
    header_timeout_s = 10.0
    body_timeout_s = 30.0
    send_timeout_s = 30.0  # the body timeout's setting
    max_pipelined = 16  # requests parsed ahead of the one being answered
    # A read shorter than this, or with fewer LFs, fits an empty queue.
    _sure_bytes, _sure_lfs = max_pipelined * MIN_REQUEST, 2 * max_pipelined

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # pause_writing as soon as output waits in user space: the kernel's buffer is full.
        transport.set_write_buffer_limits(0)
        self._phase = HEADERS
        self._header_bytes = 0  # bytes fed to the parser since the last headers ended
        self._timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._held = b""  # read but not parsed: the pipeline was full
        self._release_due = False
        self._running: Any = None  # the cycle whose app runs (uvicorn knows only the newest)
        self._arm()  # a connection that never sends anything is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._held = b""
        if self.flow is not None:
            vars(self.flow).pop("resume_reading", None)
        running = self._running
        if running is not None and running is not self.cycle and not running.response_complete:
            # uvicorn tells only the newest request; with a pipelined one queued after it, the
            # app answering would write on (under uvloop: raise on) the closed transport.
            running.disconnected = True
            running.message_event.set()
        super().connection_lost(exc)

    def data_received(self, data: bytes, bounded: bool = False) -> None:
        # `bounded`: `data` is (part of) a read already found to fit the queue's room. Else a
        # read that may hold more requests than an empty queue has room for is fed in slices.
        if not bounded and (
            self._held
            or self.pipeline
            or (
                len(data) >= self._sure_bytes
                and (len(data) > COUNT_BYTES or data.count(LF) >= self._sure_lfs)
            )
        ):
            self._receive_bounded(data)
            return
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

    def _receive_bounded(self, data: bytes) -> None:
        # Feed `data` in slices that add at most `room` requests to the queue: shorter than
        # room * MIN_REQUEST bytes, or with fewer than 2 * room LFs (one request may have begun
        # before the slice).
        if self._held:
            self._held += data  # a transport may deliver what it had read before the pause
            return
        start, end = 0, len(data)
        while start < end:
            if self._phase == REFUSED or self.transport.is_closing():
                return  # refused or closed: the rest is not parsed
            if self not in self.connections:
                return  # upgraded to a websocket (uvicorn drops what follows the upgrade too)
            room = self.max_pipelined - len(self.pipeline)
            if room <= 0:
                self._hold(data[start:])
                return
            cut = end
            if end - start >= room * MIN_REQUEST and (
                end - start > COUNT_BYTES or data.count(LF, start) >= 2 * room
            ):
                pos = start
                for _ in range(2 * room):  # memchr: cheap on a long body
                    found = data.find(LF, pos)
                    if found < 0:
                        break
                    pos = found + 1
                else:
                    cut = found  # the slice ends before the (2 * room)th LF
            self.data_received(data[start:cut], True)
            start = cut

    def _hold(self, rest: bytes) -> None:
        # The queue is full: keep the rest, stop reading until the queue is down to half.
        # uvicorn resumes reading when a response completes or the app awaits its body: while
        # something is held, that parses what is held instead (resume_reading stands in).
        self._held = rest
        self._disarm()  # what the client sent is here: its time runs again once it is parsed
        self.flow.pause_reading()
        self.flow.resume_reading = self._resume_held  # type: ignore[method-assign]

    def _resume_held(self) -> None:
        if not self._release_due:
            self._release_due = True
            self.loop.call_soon(self._release)  # on_response_complete pops the queue after this

    def _release(self) -> None:
        self._release_due = False
        if self.transport.is_closing() or len(self.pipeline) > self.max_pipelined // 2:
            return  # the next response's completion asks again
        held, self._held = self._held, b""
        self._receive_bounded(held)
        if not self._held:  # all parsed: uvicorn's flow control owns reading again
            vars(self.flow).pop("resume_reading", None)
            if not self.pipeline and not self.transport.is_closing():
                self.flow.resume_reading()  # as uvicorn does, paused while a request is queued

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
            self.data_received(data[room:], True)

    def eof_received(self) -> bool:  # type: ignore[override]  # asyncio allows a bool
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

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        self._running = cycle
        _base._start_asgi_task(self, cycle, app)

    def handle_websocket_upgrade(self) -> None:
        self._phase = IDLE  # the websocket protocol owns the connection from here
        self._disarm()
        super().handle_websocket_upgrade()

    # The send timer: while the kernel's socket buffer is full and output waits.
    def pause_writing(self) -> None:
        self.flow.pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.send_timeout_s, self._send_timed_out)

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_timed_out(self) -> None:
        self._send_timer = None
        # close() would wait for the client to take what waits, and a closed socket's kernel
        # buffer would still try to send it: reset, dropping both.
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, NO_LINGER)
        self.transport.abort()

    # The one read timer.
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
    """The protocol class for one server's limits (uvicorn instantiates it per connection);
    the body timeout also bounds how long output may wait for a client that does not read."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {
            "max_header_bytes": max_header_bytes,
            "header_timeout_s": header_timeout_s,
            "body_timeout_s": body_timeout_s,
            "send_timeout_s": body_timeout_s,
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
