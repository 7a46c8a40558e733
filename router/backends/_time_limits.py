"""HTTP calls that end by a bound, however slowly the endpoint sends.

A call's bound is a ``time.monotonic()`` value (:class:`Bound`: the card's ``timeout_s`` or the request's
deadline, whichever is sooner). httpx times each read, not a whole call, so on its own an endpoint that sends one
byte a second holds a call as long as it likes. Here:

* async: :func:`within` awaits one step under an asyncio timeout set to the time left;
* sync: a socket read cannot be interrupted from outside, so every connect, read and write is given at most the
  time left instead. :class:`BoundedTransport` is httpx's own transport on a connection pool whose network
  backend (:class:`BoundedNetwork`) caps each socket operation's timeout by the end that :func:`bounded` sets
  for the calling thread; set it around whatever may touch the network (sending the request, and each step of
  reading its body, which :class:`CheckedStream` does: a stream's steps may run on different threads).
  :class:`CheckedStream` also runs a check (cancellation, the bound) after every raw chunk. Behind an HTTP proxy
  named in the environment the transport reaches the endpoint through it, on the same bounded network.

A sync call's ``request.cancel`` (set by ``Router.close()``) is a plain flag nobody can wait on, and before the
first byte of the answer there is no chunk to check it after: so while a response is awaited, :func:`cancellable`
has each read wait in slices of :data:`CANCEL_POLL_S` and run its check between them. Only the wait for the
response's head is sliced: body reads keep their one check per chunk, so a normal call costs what it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

import httpcore
import httpx

from .base import GenerationRequest

_T = TypeVar("_T")


class Bound:
    """When one call must have ended: ``timeout_s`` from now or the request's deadline, whichever is sooner;
    whether any of its attempts so far may have set the model working (``reached``); and the endpoint's latest
    refusal while none had (``refused``)."""

    __slots__ = ("end", "by_deadline", "reached", "refused")

    def __init__(self, timeout_s: float, request: GenerationRequest) -> None:
        self.reached = False
        """An attempt failed after the endpoint took the request (a 5xx, a connection lost after sending), or was
        answered with a success: the model may have run, so a later attempt refused outright does not make the
        call cost nothing."""
        self.refused: int | None = None
        """The HTTP status (4xx) of the endpoint's latest refusal while no attempt had reached the model: a call
        the bound ends after refusals (a rate limit answering 429 to every retry) was turned away, not run."""
        end = time.monotonic() + timeout_s
        deadline = request.deadline
        if deadline is not None and deadline <= end:
            self.by_deadline, self.end = True, deadline
        else:
            self.by_deadline, self.end = False, end

    def left(self) -> float:
        return self.end - time.monotonic()

    def passed(self) -> bool:
        # a timer may fire a clock tick before ``end``: within 10 ms it was this bound that ended the wait
        return time.monotonic() >= self.end - 0.01


# -- async -----------------------------------------------------------------------------------------------------
if sys.version_info >= (3, 11):

    async def within(aw: Awaitable[_T], end: float) -> _T:
        """``await aw``, or ``TimeoutError`` once ``time.monotonic()`` reaches ``end``."""
        async with asyncio.timeout(max(0.0, end - time.monotonic())):
            return await aw

else:  # pragma: no cover - Python 3.10

    async def within(aw: Awaitable[_T], end: float) -> _T:
        try:
            return await asyncio.wait_for(aw, max(0.0, end - time.monotonic()))
        except asyncio.TimeoutError:
            raise TimeoutError("the call's time limit passed") from None


# -- sync ------------------------------------------------------------------------------------------------------
class _Limits(threading.local):
    end: float | None = None
    check: Callable[[], None] | None = None


_local = _Limits()

CANCEL_POLL_S = 0.1
"""How often a sync call waiting for its response's head checks whether it was cancelled: ``Router.close()``
cancels running calls after its first wait and then gives them as long again to record it."""


@contextlib.contextmanager
def bounded(end: float) -> Iterator[None]:
    """Network operations of this thread wait at most until ``end`` (``time.monotonic()``) inside the block."""
    previous = _local.end
    _local.end = end
    try:
        yield
    finally:
        _local.end = previous


@contextlib.contextmanager
def cancellable(check: Callable[[], None]) -> Iterator[None]:
    """Reads of this thread inside the block run ``check`` (which raises to end the call) every
    :data:`CANCEL_POLL_S` while they wait for data."""
    previous = _local.check
    _local.check = check
    try:
        yield
    finally:
        _local.check = previous


def _capped(timeout: float | None) -> float | None:
    end = _local.end
    if end is None:
        return timeout
    left = max(end - time.monotonic(), 0.001)  # a past end still times out (in 1 ms), as a timeout
    return left if timeout is None else min(timeout, left)


class _BoundedStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        timeout = _capped(timeout)
        check = _local.check
        if check is None:
            return self._inner.read(max_bytes, timeout)
        until = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if until is None else until - time.monotonic()
            if left is not None and left <= CANCEL_POLL_S:  # the last slice: its timeout is the call's
                return self._inner.read(max_bytes, max(left, 0.001))
            try:
                return self._inner.read(max_bytes, CANCEL_POLL_S)
            except httpcore.ReadTimeout:  # nothing received yet; the socket is left as it was
                check()

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _capped(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _BoundedStream(self._inner.start_tls(ssl_context, server_hostname, _capped(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class BoundedNetwork(httpcore.NetworkBackend):
    """httpcore's sync network backend, with every timeout capped by the calling thread's :func:`bounded` end."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _BoundedStream(self._inner.connect_tcp(host, port, _capped(timeout), local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _BoundedStream(self._inner.connect_unix_socket(path, _capped(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class BoundedTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport(limits=limits, proxy=proxy)`` whose connection pool runs on :class:`BoundedNetwork`.

    httpx does not take a network backend, so the pool it built is replaced by the same pool on this one (the
    deadline tests in ``tests/test_deadlines_backends.py`` fail if httpx stops using it). Through an ``http://``
    or ``https://`` ``proxy`` too; a SOCKS one keeps httpx's own pool, whose reads wait as httpx times them."""

    def __init__(self, limits: httpx.Limits, proxy: str | None = None) -> None:
        super().__init__(limits=limits, proxy=proxy)
        sizes: dict[str, Any] = {"max_connections": limits.max_connections,
                                 "max_keepalive_connections": limits.max_keepalive_connections,
                                 "keepalive_expiry": limits.keepalive_expiry, "network_backend": BoundedNetwork()}
        if proxy is None:
            self._pool.close()
            self._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(), **sizes)
            return
        via = httpx.Proxy(proxy)
        if via.url.scheme not in ("http", "https"):
            return
        self._pool.close()
        self._pool = httpcore.HTTPProxy(
            proxy_url=httpcore.URL(scheme=via.url.raw_scheme, host=via.url.raw_host, port=via.url.port,
                                   target=via.url.raw_path),
            proxy_auth=via.raw_auth, proxy_headers=via.headers.raw, ssl_context=httpx.create_ssl_context(),
            proxy_ssl_context=via.ssl_context, **sizes)


class CheckedStream(httpx.SyncByteStream):
    """A response body read within ``end`` (each read, see :func:`bounded`) that runs ``check`` after every raw
    chunk received, before lines or JSON are put together."""

    def __init__(self, inner: httpx.SyncByteStream, end: float, check: Callable[[], None]) -> None:
        self.inner = inner
        self.end = end
        self.check = check

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self.inner)
        while True:
            with bounded(self.end):  # set on every step: a generator's steps may run on different threads
                chunk = next(chunks, None)
            if chunk is None:
                return
            self.check()
            yield chunk

    def close(self) -> None:
        self.inner.close()
