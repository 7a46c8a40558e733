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

The second change: a request's headers must arrive within :data:`HEADER_TIMEOUT_S` of its first byte (of the
connection, for the first request), else the connection is closed. uvicorn bounds idle keep-alive connections but
not a request in progress, and any byte received restarts nothing, so a client sending its headers a byte at a
time could hold a connection (and a worker's memory) indefinitely. The body's own bound is the chat handler's
(``proxy.body_timeout_s``, a 408).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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

    def __getattr__(self, name: str) -> Any:  # everything else (extra info, flow control, is_closing...)
        return getattr(self._transport, name)


HEADER_TIMEOUT_S = 10.0
"""Seconds a request's headers may take (``proxy.header_timeout_s``; set per process by ``app_from_env``)."""


def set_header_timeout(seconds: float) -> None:
    global HEADER_TIMEOUT_S
    HEADER_TIMEOUT_S = seconds


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """``uvicorn.run(..., http=OneWriteHttpToolsProtocol)``: uvicorn's httptools protocol over :class:`_OneWrite`,
    with a deadline on each request's headers."""

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_OneWrite(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]
        self._start_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_header_timer()

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _start_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = asyncio.get_running_loop().call_later(HEADER_TIMEOUT_S, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        self.transport.close()
