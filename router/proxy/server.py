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


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """``uvicorn.run(..., http=OneWriteHttpToolsProtocol)``: uvicorn's httptools protocol over :class:`_OneWrite`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_OneWrite(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]
