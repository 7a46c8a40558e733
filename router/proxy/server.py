"""uvicorn's httptools protocol with one change: what a response writes in one event-loop iteration leaves in one
write, at the end of the iteration.

uvicorn writes the status line and headers when the app sends ``http.response.start`` and the body when it sends
``http.response.body``: two ``send`` system calls and, with ``TCP_NODELAY``, two TCP segments, so on loopback the
kernel runs its transmit and receive path twice and may wake the client twice. For the proxy's JSON answers (both
messages are sent back to back) that second write was ~3 % of the proxy's CPU per request. :class:`_OneWrite`
holds writes until the end of the current event-loop iteration and sends them joined. Holding the body too (not
only the head) means that under load the responses finished in one iteration are built back to back and their
system calls follow together, instead of a system call between every two responses' Python work: ~9 % less proxy
CPU per request at concurrency 64 (``benchmarks/README.md``, *Proxy*). Nothing waits longer than the iteration: a
stream's headers and each of its chunks still go out before the next chunk is awaited.

The second change: deadlines on reading each request. Its headers must arrive within :data:`HEADER_TIMEOUT_S` of
its first byte (of the connection, for the first request), else the connection is closed; its body within
:data:`BODY_TIMEOUT_S` of the headers, else it is answered 408 and closed. uvicorn bounds idle keep-alive
connections but not a request in progress (any byte received keeps it going), so a client sending a byte at a time
could hold a connection, and the memory of its half-read request, indefinitely. Kept here rather than in the ASGI
handler: a timer per request phase in the protocol costs a fraction of an ``asyncio.timeout`` around each
``receive()``.

The third: a request of which more than :data:`MAX_HEAD_BYTES` have come with its headers still unfinished is
answered 431 (counted per read, so headers that end within the read that passes the limit still pass). httptools
sets no limit and keeps what has come: a client that never ended its headers held all it sent until the header
deadline (80 MB in 10 s over loopback), on as many connections as it opened, with no key needed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from typing import Any

from .._ids import new_request_id
from .._request import MAX_REQUEST_ID
from ..errors import HeadersTooLargeError, RequestTimeoutError
from ._fast_cycle import ProtocolBase
from .public import BODY_TIMED_OUT

BEFORE_SEND: list[Callable[[], None]] = []
"""Called before any response bytes of this process leave (this module's protocol only): ``router serve`` puts
the ledger's :meth:`~router.proxy.ledger_writer.BackgroundLedger.journal_pending` here, so the records of the
answers sent are in the journal first. A hook must not raise."""


class _OneWrite:
    """Wraps a transport: writes are held until the end of this loop iteration, then sent as one."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            self._held = [bytes(data)]
            self._loop.call_soon(self._flush)
        else:
            held.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def _flush(self) -> None:
        for hook in BEFORE_SEND:
            hook()
        held, self._held = self._held, None
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held or ()))

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()  # what was written before close still goes out, as with a plain transport
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        # uvicorn asks after every response: through __getattr__, each ask would first fail the normal lookup and
        # raise (and catch) an AttributeError, ~3 % of the protocol's instructions per request
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # everything else (extra info, flow control...)
        return getattr(self._transport, name)


HEADER_TIMEOUT_S = 10.0
"""Seconds a request's headers may take (``proxy.header_timeout_s``; set per process by ``app_from_env``)."""
BODY_TIMEOUT_S = 30.0
"""Seconds a request's body may take after its headers (``proxy.body_timeout_s``)."""
MAX_HEAD_BYTES = 64 * 1024
"""The most bytes of a request that may come before its headers end (431 beyond): nginx reads 32 KiB, Node.js
16 KiB."""


def set_timeouts(header_s: float, body_s: float) -> None:
    global HEADER_TIMEOUT_S, BODY_TIMEOUT_S
    HEADER_TIMEOUT_S, BODY_TIMEOUT_S = header_s, body_s


def _closing_response(error: RequestTimeoutError | HeadersTooLargeError, status_line: bytes,
                      request_id: bytes) -> bytes:
    body = json.dumps(error.to_openai()).encode()
    return (b"HTTP/1.1 %s\r\ncontent-type: application/json\r\nx-request-id: %s\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (status_line, request_id, len(body), body))


def _request_id(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The id an answer the protocol gives itself carries, as the chat route's answers do: the request's
    ``x-request-id`` (the first, up to :data:`MAX_REQUEST_ID` characters), else one made here."""
    for name, value in headers:
        if name == b"x-request-id":
            if value and len(value) <= MAX_REQUEST_ID:
                return value
            break
    return new_request_id().encode()


class OneWriteHttpToolsProtocol(ProtocolBase):
    """``uvicorn.run(..., http=OneWriteHttpToolsProtocol)``: uvicorn's httptools protocol (made cheaper per request
    by :mod:`router.proxy._fast_cycle` on the uvicorn it follows) over :class:`_OneWrite`, with deadlines on reading
    each request. A deadline is armed only when a request is still incomplete after the bytes received so far have
    been parsed: a request that arrives whole, the usual case, costs no timer."""

    _phase = 1  # 0: between requests; 1: reading headers (a new connection too); 2: reading a body
    _armed = 0  # the phase the timer is for (0: none)
    _read_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0  # bytes received while the request's headers were still incomplete
    _head_refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_OneWrite(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]
        self._arm()  # a connection that sends nothing at all

    def data_received(self, data: bytes) -> None:
        if self._head_refused:
            return  # what still comes of a refused request is read and dropped (see _headers_too_large)
        super().data_received(data)
        if self._phase == 1:  # headers still unfinished: data was theirs (but for a previous request's end)
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self._headers_too_large()
        if self._phase != self._armed:
            self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = 1

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._phase = 2
        self._head_bytes = 0

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = 0
        self._arm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        self._armed = self._phase
        if self._phase:
            limit = HEADER_TIMEOUT_S if self._phase == 1 else BODY_TIMEOUT_S
            self._read_timer = self.loop.call_later(limit, self._too_slow, self._phase == 2)

    def _headers_too_large(self) -> None:
        """Answered before the app has seen the request, and the answer ended with a FIN. The connection is not
        closed at once: a close with the client's bytes unread sends a reset, which may discard the 431 before the
        client reads it. What more comes is dropped as it arrives, until the client closes or the headers' deadline
        closes the connection."""
        error = HeadersTooLargeError(f"more than {MAX_HEAD_BYTES:,} bytes of the request came before the end of "
                                     "its headers; send smaller headers")
        self._head_refused = True
        # its headers have not been read: no x-request-id of the request's can be known
        self.transport.write(_closing_response(error, b"431 Request Header Fields Too Large", _request_id(())))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:  # a TLS transport cannot half-close
            self.transport.close()

    def _too_slow(self, body: bool) -> None:
        """Headers too slow: close. A body too slow: a 408 goes out first unless the app has already answered (an
        early 413 for a declared oversize body, which a client may go on sending); the app then sees the client
        gone."""
        self._read_timer = None
        answered = self.cycle is not None and self.cycle.response_started
        if body and not answered and not self.transport.is_closing():
            error = RequestTimeoutError(f"the request body did not arrive within {BODY_TIMEOUT_S:g} s")
            headers = self.cycle.scope["headers"] if self.cycle is not None else ()
            self.transport.write(_closing_response(error, b"408 Request Timeout", _request_id(headers)))
            if self.cycle is not None:  # the app sees the client gone next: this tells it the 408 was answered
                self.cycle.scope[BODY_TIMED_OUT] = error  # type: ignore[literal-required]
        self.transport.close()
