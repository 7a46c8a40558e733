"""A small keep-alive HTTP/1.1 client for one job: POST a JSON body to one URL, read one whole response.

Why it exists: the proxy awaits one upstream call per routed request on its event loop, and there the client's
own CPU per call is a large share of the proxy's. This client (asyncio transports and the ``httptools``
parser, which uvicorn also uses) spends ~50 µs of CPU per call here, against ~140-240 µs for aiohttp and more
for httpx. ``python benchmarks/bench_proxy.py`` (and ``benchmarks/ab_proxy.py`` for an A/B against another
commit) measure it; the figures are in ``benchmarks/README.md``, section *Proxy*.

What it does not do, on purpose: redirects, proxies, compression (the request offers none), streaming bodies.
Everything else (streams, sync calls, endpoints behind an ``HTTP_PROXY``) goes through httpx in
:mod:`router.backends.openai_http`, which is the readable reference for what a call does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

import httptools

from ..errors import ConfigError


class PoolAnswer(NamedTuple):
    """One response: its status, its whole body, and its ``Retry-After`` header as sent (``None`` if absent),
    the one header a caller needs (an endpoint that is busy or down saying when to come back)."""

    status: int
    body: bytes
    retry_after: str | None = None


class _Connection(asyncio.Protocol):
    """One keep-alive connection: feeds bytes to httptools' response parser, resolves ``waiter`` with
    ``(answer, keep_alive)`` when a response is complete, or fails it when the connection breaks."""

    def __init__(self, max_body: int) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[PoolAnswer, bool]] | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self._body: list[bytes] = []
        self._size = 0
        self._started = False  # status line seen for the current response
        self._framed = False  # Content-Length or chunked: the parser knows where the body ends
        self._retry_after: str | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed HTTP response: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost finishes a body framed by the close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._started and not self._framed and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self._answer(self._parser.get_status_code()), False))
            return
        self._fail(ConnectionResetError(f"connection closed before a complete response{f': {exc}' if exc else ''}"))

    # httptools callbacks
    def on_status(self, status: bytes) -> None:
        self._started = True

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in (b"content-length", b"transfer-encoding"):
            self._framed = True
        elif name == b"retry-after":
            self._retry_after = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            self._fail(ConnectionError(f"response body over {self._max_body:,} bytes"))
            self.close()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 1xx: an interim response; the real one follows on the same connection
            self._reset()
            return
        answer = self._answer(status)
        self._reset()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((answer, self._parser.should_keep_alive()))

    # helpers
    def _answer(self, status: int) -> PoolAnswer:
        return PoolAnswer(status, b"".join(self._body), self._retry_after)

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class NotSentTimeout(TimeoutError):
    """The call's time ran out before its request was sent: while connecting, or waiting for a free connection
    (so the server never saw it)."""


class HTTPPool:
    """POST a JSON body to one URL over pooled keep-alive connections; return a :class:`PoolAnswer`.

    Transport failures surface as ``OSError`` (``ConnectionError``; ``TimeoutError`` when the call's total time
    limit passed, :class:`NotSentTimeout` when that was before the request was sent), which ``agenerate`` may
    retry. ``timeout_s`` bounds a whole call (waiting for a free
    connection, connecting, sending, reading the response), not each read; :meth:`post` takes a shorter one per
    call. A request that fails on a *reused* connection before any response byte arrived is
    sent once more on a fresh connection at once: the server closed an idle connection as we wrote to it, and
    had not seen the request. At most ``limit`` connections are open; more callers wait for one.
    No redirects, proxies or compression (the request does not offer any), and TLS for ``https://``."""

    def __init__(self, url: str, headers: dict[str, str], *, timeout_s: float, connect_timeout_s: float,
                 loop: asyncio.AbstractEventLoop, limit: int = 256, max_body: int = 64 * 1024 * 1024) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"backend base_url must be http:// or https://, not {url!r}")
        self.loop = loop
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl: Any = None
        if parts.scheme == "https":
            import ssl

            self._ssl = ssl.create_default_context()
        if any(c in f"{k}{v}" for k, v in headers.items() for c in "\r\n"):
            raise ConfigError(f"{url}: a request header (e.g. the API key) contains a line break")
        path = quote(parts.path or "/", safe="/:@!$&'()*+,;=%-._~") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rsplit("@", 1)[-1]
        # identity: this client reads bodies as they come, and a request without Accept-Encoding allows the
        # server any encoding (RFC 9110, 12.5.3); some gzip their answers then
        lines = [f"POST {path} HTTP/1.1", f"Host: {host_header}", "Accept: application/json",
                 "Accept-Encoding: identity", "User-Agent: router", *(f"{k}: {v}" for k, v in headers.items())]
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_body = max_body
        self._idle: deque[_Connection] = deque()
        self._limit = limit
        self._busy = 0  # calls holding a connection slot
        self._queue: deque[asyncio.Future[None]] = deque()  # calls waiting for a slot, first come first served
        self._closed = False

    async def post(self, body: bytes, *, timeout_s: float | None = None) -> PoolAnswer:
        """The answer to one POST; ``TimeoutError`` once ``timeout_s`` (default: the pool's) has passed."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        end = time.monotonic() + limit
        payload = self._head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        if self._busy >= self._limit or self._queue:
            try:
                await asyncio.wait_for(self._wait_for_slot(), max(0.0, end - time.monotonic()))
            except asyncio.TimeoutError:
                raise NotSentTimeout(f"no free connection to {self.host}:{self.port} within {limit:.3g} s") from None
        else:
            self._busy += 1
        try:
            conn = self._take_idle()
            if conn is not None:
                try:
                    return await self._exchange(conn, payload, end, limit)
                except ConnectionError:
                    if conn._started:  # a response had begun: the server saw the request
                        raise
                    # the server closed this idle connection as we wrote to it: send it once more on a fresh one
            return await self._exchange(await self._connect(end), payload, end, limit)
        finally:
            self._release_slot()

    async def _wait_for_slot(self) -> None:
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._queue.append(waiter)
        try:
            await waiter  # _release_slot hands its slot over by resolving this future
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # the slot was handed over just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._queue.remove(waiter)
            raise

    def _release_slot(self) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the next caller; _busy stays the same
                return
        self._busy -= 1

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()  # most recently used first: the likeliest to be alive
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def _connect(self, end: float) -> _Connection:
        wait = max(0.0, min(self.connect_timeout_s, end - time.monotonic()))
        try:
            _, conn = await asyncio.wait_for(self.loop.create_connection(
                lambda: _Connection(self.max_body), self.host, self.port, ssl=self._ssl), wait)
        except asyncio.TimeoutError:
            raise NotSentTimeout(f"connecting to {self.host}:{self.port} timed out after {wait:.3g} s") from None
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    async def _exchange(self, conn: _Connection, payload: bytes, end: float, limit: float) -> PoolAnswer:
        waiter: asyncio.Future[tuple[PoolAnswer, bool]] = self.loop.create_future()
        conn.waiter = waiter
        timer = self.loop.call_later(max(0.0, end - time.monotonic()), self._expire, conn, waiter, limit)
        try:
            assert conn.transport is not None
            conn.transport.write(payload)
            answer, keep_alive = await waiter
        except BaseException:  # timed out, failed or cancelled: the connection is mid-response, never reuse it
            conn.close()
            raise
        finally:
            timer.cancel()
        if keep_alive and not conn.closed and not self._closed:
            self._idle.append(conn)
        else:
            conn.close()
        return answer

    def _expire(self, conn: _Connection, waiter: asyncio.Future[tuple[PoolAnswer, bool]], limit: float) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError(f"no complete response within {limit:.3g} s"))
        conn.close()

    def close(self) -> None:
        """Close idle connections (call on the pool's loop); connections in use close when their call ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    def close_soon(self) -> None:
        """``close`` from any thread: on the pool's loop when it runs elsewhere, at once when it is stopped."""
        if self.loop.is_closed():
            self._closed = True
            self._idle.clear()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop or not self.loop.is_running():
            self.close()
        else:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.close)
