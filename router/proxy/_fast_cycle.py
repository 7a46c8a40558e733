"""uvicorn's httptools protocol (uvicorn 0.54 and 0.55) with two of its per-request costs cut, behaviour unchanged.

Why a module of its own: both changes follow uvicorn's code closely (parts of it are copied), so they are kept apart
from the proxy's own protocol changes in :mod:`router.proxy.server`, and ``tests/test_fast_cycle.py`` runs them
against uvicorn's originals so that a uvicorn upgrade that changes what they follow shows up. Justified by
``python benchmarks/bench_instructions.py server`` (router serve's HTTP protocol alone, instructions per request):
~154k on uvicorn's own code, ~142k with these (the header checks ~7k of it, the timer ~5.5k). Copied code must not
run against another version's internals, so :data:`ProtocolBase` is uvicorn's own protocol unless the installed
uvicorn is one of the series followed (:data:`FOLLOWED_UVICORN`).

- :class:`FastResponseCycle`: uvicorn checks every response header's name and value with a regular-expression search
  each, and the regular-expression engine spends tens of instructions per byte; the proxy's answers carry ~8
  headers and ~300 bytes of them. The forbidden bytes form one set for names and one for values (both expressions
  are single character classes), so all the names are checked at once, with ``bytes.translate`` deleting the
  forbidden bytes from their concatenation (a table look-up per byte), and all the values likewise. Only when that
  finds a forbidden byte (or headers that are not pairs of bytes) are they checked one by one as uvicorn does, so
  the same header raises the same error after the same earlier headers were handled.
- The keep-alive timeout: uvicorn creates a timer after every response and cancels it when the next request's
  first bytes arrive. Here a connection keeps one timer and each response only moves its deadline; when the timer
  fires it closes the connection if it has been idle since the deadline was set and the deadline has passed, or
  waits the rest of the way. An idle connection still closes ``timeout_keep_alive`` seconds after its last response.
"""

from __future__ import annotations

import re
import types
from typing import TYPE_CHECKING, Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
    get_client_addr,
    get_path_with_query_string,
)


def _bytes_matching(single_byte_class: re.Pattern[bytes]) -> bytes:
    """The bytes that ``single_byte_class`` (a regular expression matching one byte) matches: a string holds one of
    them exactly when the expression finds something in it."""
    return bytes(b for b in range(256) if single_byte_class.fullmatch(bytes((b,))))


_FORBIDDEN_IN_NAME = _bytes_matching(HEADER_RE)
_FORBIDDEN_IN_VALUE = _bytes_matching(HEADER_VALUE_RE)


_PAIR_TYPES = frozenset((tuple, list))
"""What a header pair may be for the joined check: sequences, which read the same when iterated again."""


def _all_valid(headers: list[Any]) -> bool:
    """True when ``headers`` are (name, value) pairs of bytes in which uvicorn's header checks find nothing; False
    when one of them would raise, or when a pair is not a tuple or list of bytes (they are then checked one by one,
    as uvicorn does, which fails where uvicorn fails)."""
    if not _PAIR_TYPES.issuperset(map(type, headers)):
        return False
    try:
        names, values = zip(*headers, strict=False)  # a pair longer than two fails in the loop, as in uvicorn's
        all_names = b"".join(names)
        all_values = b"".join(values)
    except (TypeError, ValueError):
        return False
    return (len(all_names.translate(None, _FORBIDDEN_IN_NAME)) == len(all_names)
            and len(all_values.translate(None, _FORBIDDEN_IN_VALUE)) == len(all_values))


class FastResponseCycle(RequestResponseCycle):
    """uvicorn's cycle, whose ``send`` checks the response headers together (see the module's docstring)."""

    async def send(self, message: Any) -> None:
        # uvicorn 0.54 and 0.55's RequestResponseCycle.send; only the header checks differ (`checked`)
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()

        if self.disconnected:
            return

        if not self.response_started:
            # Sending response status line and headers
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{message['type']}'.")

            self.response_started = True
            self.waiting_for_100_continue = False

            status_code = message["status"]
            headers = self.default_headers + list(message.get("headers", []))

            if self.access_log:
                self.access_logger.info(
                    '%s - "%s %s HTTP/%s" %d',
                    get_client_addr(self.scope),
                    self.scope["method"],
                    get_path_with_query_string(self.scope),
                    self.scope["http_version"],
                    status_code,
                )

            # Write response status line and headers
            content = [STATUS_LINE[status_code]]
            has_connection_close = False

            checked = _all_valid(headers)
            for name, value in headers:
                if not checked:
                    if HEADER_RE.search(name):
                        raise RuntimeError("Invalid HTTP header name.")
                    if HEADER_VALUE_RE.search(value):
                        raise RuntimeError("Invalid HTTP header value.")

                name = name.lower()
                if name == b"content-length" and self.chunked_encoding is None:
                    self.expected_content_length = int(value.decode())
                    self.chunked_encoding = False
                elif name == b"transfer-encoding" and value.lower() == b"chunked":
                    self.expected_content_length = 0
                    self.chunked_encoding = True
                elif name == b"connection":
                    connection = [token.lower().strip() for token in value.split(b",")]
                    if b"close" in connection:
                        self.keep_alive = False
                        has_connection_close = True
                content.extend([name, b": ", value, b"\r\n"])

            if not self.keep_alive and not has_connection_close:
                content.append(b"connection: close\r\n")

            if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status_code not in (204, 304):
                # Neither content-length nor transfer-encoding specified
                self.chunked_encoding = True
                content.append(b"transfer-encoding: chunked\r\n")

            content.append(b"\r\n")
            self.transport.write(b"".join(content))

        elif not self.response_complete:
            # Sending response body
            if message["type"] != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{message['type']}'.")

            body = message.get("body", b"")
            more_body = message.get("more_body", False)

            # Write response body
            if self.scope["method"] == "HEAD":
                self.expected_content_length = 0
            elif self.chunked_encoding:
                content = [b"%x\r\n" % len(body), body, b"\r\n"] if body else []
                if not more_body:
                    content.append(b"0\r\n\r\n")
                self.transport.write(b"".join(content))
            else:
                num_bytes = len(body)
                if num_bytes > self.expected_content_length:
                    raise RuntimeError("Response content longer than Content-Length")
                else:
                    self.expected_content_length -= num_bytes
                self.transport.write(body)

            # Handle response completion
            if not more_body:
                if self.expected_content_length != 0:
                    raise RuntimeError("Response content shorter than Content-Length")
                self.response_complete = True
                self.message_event.set()
                if not self.keep_alive:
                    self.transport.close()
                self.on_response()

        else:
            # Response already sent
            raise RuntimeError(f"Unexpected ASGI message '{message['type']}' sent, after response already completed.")


def _with_cycle_class(method: types.FunctionType, cycle_class: type) -> types.FunctionType:
    """``method`` of uvicorn's protocol, unchanged, but creating its ``RequestResponseCycle`` as ``cycle_class``:
    its code run over a copy of its module's names in which that one name is rebound."""
    if method.__code__.co_freevars:
        raise TypeError(f"{method.__qualname__} closes over names; rebinding its globals would lose them")
    names = {**method.__globals__, "RequestResponseCycle": cycle_class}
    return types.FunctionType(method.__code__, names, method.__name__, method.__defaults__)


class FastCycleProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with :class:`FastResponseCycle` and one keep-alive timer per connection."""

    on_headers_complete = _with_cycle_class(cast(types.FunctionType, HttpToolsProtocol.on_headers_complete),
                                            FastResponseCycle)

    _idle_deadline: float | None = None
    """When the connection, idle since its last response, is closed (loop time); None while it is not idle."""

    def _unset_keepalive_if_required(self) -> None:
        self._idle_deadline = None  # the timer stays: when it fires, it finds the connection busy

    def on_response_complete(self) -> None:
        # uvicorn 0.54 and 0.55's HttpToolsProtocol.on_response_complete, but for the timer
        self.server_state.total_requests += 1

        if self.transport.is_closing():
            return

        self._idle_deadline = None

        # Unpause data reads if needed.
        self.flow.resume_reading()

        # Unblock any pipelined events. If there are none, arm the
        # Keep-Alive timeout instead.
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_deadline = self.loop.time() + self.timeout_keep_alive
            if self.timeout_keep_alive_task is None:
                self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def _idle_check(self) -> None:
        self.timeout_keep_alive_task = None
        if self._idle_deadline is None:
            return  # busy: its next response arms the timer again
        left = self._idle_deadline - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._idle_check)
        else:
            self.timeout_keep_alive_handler()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None


FOLLOWED_UVICORN = ("0.54", "0.55")
"""The uvicorn release series whose code this module copies and changes: the methods copied are the same in each
(0.55 changed only other methods of the protocol: header values lose trailing spaces, upgrades, task creation)."""
FOLLOWS_INSTALLED_UVICORN = ".".join(uvicorn.__version__.split(".")[:2]) in FOLLOWED_UVICORN
# What ``router serve``'s protocol builds on: :class:`FastCycleProtocol` on the uvicorn series it follows, else
# uvicorn's own protocol (correct on any version, ~12k instructions per request more). The checker sees uvicorn's
# (a base class must be one class to it; the other is a subclass with the same interface).
if TYPE_CHECKING:
    ProtocolBase = HttpToolsProtocol
else:
    ProtocolBase = FastCycleProtocol if FOLLOWS_INSTALLED_UVICORN else HttpToolsProtocol
