"""uvicorn's httptools protocol with one change: a response's head and body leave in one write.

uvicorn writes the status line and headers when the app sends ``http.response.start`` and the body when it sends
``http.response.body``: two ``send`` system calls and, with ``TCP_NODELAY``, two TCP segments, so on loopback the
kernel runs its transmit and receive path twice and may wake the client twice. For the proxy's JSON answers (both
messages are sent back to back) that second write was ~3 % of the proxy's CPU per request. :class:`_OneWrite`
holds a write until the next one (then sends both joined) or until the end of the current event-loop iteration,
so nothing waits longer than that: a stream's headers still go out before the first chunk is awaited.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _OneWrite:
    """Wraps a transport: a write is held until the next write or the end of this loop iteration."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self._flush)
            return
        self._held = None
        self._transport.write(held + data)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

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


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """``uvicorn.run(..., http=OneWriteHttpToolsProtocol)``: uvicorn's httptools protocol over :class:`_OneWrite`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_OneWrite(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]
