"""router/proxy/_fast_cycle.py against the uvicorn code it follows: the same bytes written, the same errors, the
same connection state, over many header sequences and keep-alive histories. A uvicorn upgrade that changes what
the module copies fails here."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from router.proxy._fast_cycle import (
    _FORBIDDEN_IN_NAME,
    _FORBIDDEN_IN_VALUE,
    FOLLOWED_UVICORN,
    FOLLOWS_INSTALLED_UVICORN,
    FastCycleProtocol,
    FastResponseCycle,
)
from router.proxy.server import OneWriteHttpToolsProtocol

# The copies are compared with the uvicorn installed; on another series router serve does not use them
pytestmark = pytest.mark.skipif(
    not FOLLOWS_INSTALLED_UVICORN,
    reason=f"uvicorn {uvicorn.__version__} installed; the copies follow {', '.join(FOLLOWED_UVICORN)}",
)


class Transport(asyncio.Transport):
    """Records what is written and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    """Runs a ``send`` that never waits (its flow is never paused here)."""
    with pytest.raises(StopIteration):
        coroutine.send(None)


def _outcome(cycle_class: type[RequestResponseCycle], method: str, keep_alive: bool, default_headers: list[Any],
             messages: list[dict[str, Any]]) -> tuple[Any, ...]:
    """What sending ``messages`` through a fresh cycle of ``cycle_class`` does: the bytes written, the error it
    stopped at (type and message), and the cycle's state afterwards."""
    transport = Transport()
    responses: list[None] = []
    cycle = cycle_class(
        scope={"type": "http", "method": method, "http_version": "1.1", "path": "/", "query_string": b"",
               "headers": []},  # type: ignore[typeddict-item]
        transport=transport, flow=FlowControl(transport), logger=None,  # type: ignore[arg-type]
        access_logger=None, access_log=False, default_headers=default_headers,  # type: ignore[arg-type]
        message_event=asyncio.Event(), expect_100_continue=False, keep_alive=keep_alive,
        on_response=lambda: responses.append(None))
    error = None
    for message in messages:
        try:
            _run(cycle.send(message))  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - the outcome compared includes the exception
            error = (type(exc), str(exc))
            break
    return (transport.written, transport.closed, error, len(responses), cycle.keep_alive, cycle.chunked_encoding,
            cycle.expected_content_length, cycle.response_started, cycle.response_complete,
            cycle.waiting_for_100_continue)


_NAMES = [b"content-type", b"x-request-id", b"X-Router-Model", b"date", b"Set-Cookie", b"x-r\xe9", b"a"]
_VALUES = [b"application/json", b"chatcmpl-019ad0c4a1b2c3d4", b"tab\there", b"", b"caf\xc3\xa9", b"a, b; c=d"]
_SPECIAL = [(b"content-length", b"5"), (b"Content-Length", b"5"), (b"content-length", b"12"),
            (b"content-length", b"abc"), (b"content-length", b" 5 "), (b"transfer-encoding", b"chunked"),
            (b"Transfer-Encoding", b"CHUNKED"), (b"transfer-encoding", b"gzip"), (b"connection", b"close"),
            (b"Connection", b"keep-alive, Close"), (b"connection", b"upgrade"), (b"connection", b"closed")]
_BAD_NAMES = [bytes((b,)) + b"x" for b in _FORBIDDEN_IN_NAME]
_BAD_VALUES = [b"x" + bytes((b,)) for b in _FORBIDDEN_IN_VALUE]
_ODD_PAIRS: list[Any] = [
    ("content-type", b"text/plain"), (b"content-type", "text/plain"), [b"x-list", b"pair"], (b"x-three", b"a", b"b"),
    (b"x-one",), b"ab", 7, (bytearray(b"x-bytearray"), bytearray(b"v")), (memoryview(b"x-view"), b"v"),
    (b"content-length", memoryview(b"5")), (bytearray(b"Content-Length"), bytearray(b"5")),
]


def _random_headers(rng: random.Random) -> list[Any]:
    headers: list[Any] = []
    for _ in range(rng.randrange(0, 9)):
        kind = rng.random()
        if kind < 0.55:
            headers.append((rng.choice(_NAMES), rng.choice(_VALUES)))
        elif kind < 0.8:
            headers.append(rng.choice(_SPECIAL))
        elif kind < 0.88:
            headers.append((rng.choice(_BAD_NAMES), rng.choice(_VALUES)))
        elif kind < 0.96:
            headers.append((rng.choice(_NAMES), rng.choice(_BAD_VALUES)))
        else:
            headers.append(rng.choice(_ODD_PAIRS))
    return headers


def _random_body(rng: random.Random) -> list[dict[str, Any]]:
    parts = [rng.choice([b"", b"hello", b"hello world!", b"x" * 20]) for _ in range(rng.randrange(1, 4))]
    last = len(parts) - 1
    return [{"type": "http.response.body", "body": part, "more_body": i < last} for i, part in enumerate(parts)]


def test_forbidden_bytes_are_what_uvicorns_expressions_find() -> None:
    for b in range(256):
        byte = bytes((b,))
        assert (b in _FORBIDDEN_IN_NAME) == (HEADER_RE.search(b"abc" + byte + b"def") is not None)
        assert (b in _FORBIDDEN_IN_VALUE) == (HEADER_VALUE_RE.search(b"abc" + byte + b"def") is not None)


def test_the_cycle_sends_what_uvicorns_sends_for_many_header_sequences() -> None:
    rng = random.Random(20240611)
    dates = [[], [(b"date", b"Tue, 11 Jun 2024 10:00:00 GMT")], [(b"server", b"uvicorn"), (b"x-bad", b"a\nb")]]
    cases = 0
    for _ in range(4000):
        method = rng.choice(["GET", "POST", "HEAD"])
        status = rng.choice([200, 204, 304, 404, 500])
        headers = _random_headers(rng)
        messages = [{"type": "http.response.start", "status": status, "headers": headers}, *_random_body(rng)]
        if rng.random() < 0.05:
            messages.append({"type": "http.response.body", "body": b"late"})  # after the response completed
        if rng.random() < 0.03:
            messages.reverse()  # a body before the start
        keep_alive = rng.random() < 0.8
        default = rng.choice(dates)
        expected = _outcome(RequestResponseCycle, method, keep_alive, default, messages)
        assert _outcome(FastResponseCycle, method, keep_alive, default, messages) == expected, (method, headers)
        cases += 1
    assert cases == 4000


@pytest.mark.parametrize("headers", [
    [(b"content-type", b"application/json"), (b"content-length", b"5")],
    [(b"Content-Type", b"text/plain"), (b"x-bad name", b"v"), (b"content-length", b"5")],  # an invalid name
    [(b"content-length", b"5"), (b"x-v", b"bad\r\nvalue")],  # an invalid value after a handled header
    [(b"x-v", b"bad\x7f"), (b"x-n@me", b"v")],  # the value's error comes first, as uvicorn checks in order
    [(b"transfer-encoding", b"chunked"), (b"content-length", b"5")],
    [(b"connection", b"close"), (b"content-length", b"abc")],
    [],
])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("keep_alive", [True, False])
def test_the_cases_named(headers: list[Any], method: str, keep_alive: bool) -> None:
    messages = [{"type": "http.response.start", "status": 200, "headers": headers},
                {"type": "http.response.body", "body": b"hello"}]
    expected = _outcome(RequestResponseCycle, method, keep_alive, [], messages)
    assert _outcome(FastResponseCycle, method, keep_alive, [], messages) == expected


def test_header_pairs_given_as_one_shot_iterators_are_read_once() -> None:
    def messages() -> list[dict[str, Any]]:
        return [{"type": "http.response.start", "status": 200,
                 "headers": [iter((b"content-length", b"5")), iter((b"x-a", b"b"))]},
                {"type": "http.response.body", "body": b"hello"}]

    expected = _outcome(RequestResponseCycle, "GET", True, [], messages())
    assert expected[2] is None  # uvicorn accepts them
    assert _outcome(FastResponseCycle, "GET", True, [], messages()) == expected


class ManualLoop:
    """An event loop whose clock and timers the test moves: ``call_later`` only records; :meth:`advance` runs what
    falls due. Everything else is the running loop's."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.now = 1000.0
        self.timers: list[asyncio.TimerHandle] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> asyncio.TimerHandle:
        timer = asyncio.TimerHandle(self.now + delay, callback, args, self._loop)  # type: ignore[arg-type]
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = [t for t in self.timers if not t.cancelled() and t.when() <= end]
            if not due:
                break
            first = min(due, key=lambda t: t.when())
            self.timers.remove(first)
            self.now = max(self.now, first.when())
            first._run()
        self.now = end
        self.timers = [t for t in self.timers if not t.cancelled()]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


_ANSWER = b"hello"


async def _answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(_ANSWER))]})
    await send({"type": "http.response.body", "body": _ANSWER})


def _request(method: str = "GET", version: str = "1.1", extra: bytes = b"") -> bytes:
    return f"{method} / HTTP/{version}\r\nhost: x\r\n".encode() + extra + b"\r\n"


async def _history(protocol_class: type[HttpToolsProtocol], steps: list[tuple[str, Any]],
                   timeout: float = 5) -> list[tuple[float, list[bytes], bool]]:
    """Drives a connection of ``protocol_class`` through ``steps`` (("data", bytes): bytes arrive and are answered;
    ("wait", seconds): the clock moves) and says after each: the time, what was written, whether it is closed."""
    loop = ManualLoop(asyncio.get_running_loop())
    config = Config(app=_answer, lifespan="off", log_level="warning", access_log=False, proxy_headers=False,
                    timeout_keep_alive=timeout)  # type: ignore[arg-type]
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={},
                              _loop=loop)  # type: ignore[arg-type]
    transport = Transport()
    protocol.connection_made(transport)
    seen = []
    for kind, what in steps:
        if kind == "data":
            protocol.data_received(what)
            for _ in range(6):  # the app's task runs and answers
                await asyncio.sleep(0)
        else:
            loop.advance(what)
        seen.append((loop.now, list(transport.written), transport.closed))
        transport.written.clear()
    protocol.connection_lost(None)
    return seen


@pytest.mark.parametrize("steps", [
    [("data", _request()), ("wait", 4.9), ("wait", 0.2)],  # idle: closed after the keep-alive timeout
    [("data", _request()), ("wait", 3), ("data", _request()), ("wait", 2.5), ("wait", 2), ("wait", 1)],
    [("data", _request()), ("wait", 4), ("data", b"GET / HT"), ("wait", 20), ("data", b"TP/1.1\r\n\r\n"),
     ("wait", 4.9), ("wait", 0.2)],  # a request in progress is not idle, however long it takes
    [("data", _request() + _request("HEAD")), ("wait", 4.9), ("wait", 0.2)],  # pipelined
    [("data", _request(version="1.0")), ("wait", 6)],  # no keep-alive
    [("data", _request(extra=b"connection: close\r\n")), ("wait", 6)],
    [("wait", 10), ("data", _request()), ("wait", 5)],  # nothing before the first request: not uvicorn's to close
])
def test_the_keep_alive_timeout_closes_what_uvicorns_closes_when_it_does(steps: list[tuple[str, Any]]) -> None:
    async def both() -> None:
        assert await _history(FastCycleProtocol, steps) == await _history(HttpToolsProtocol, steps)

    asyncio.run(both())


def test_many_keep_alive_histories() -> None:
    rng = random.Random(7)

    async def compare() -> None:
        for _ in range(60):
            steps: list[tuple[str, Any]] = []
            for _ in range(rng.randrange(1, 12)):
                if rng.random() < 0.4:
                    steps.append(("data", rng.choice([_request(), _request("HEAD"), _request() * 2, b"GET / H",
                                                      b"TTP/1.1\r\nhost: x\r\n\r\n"])))
                else:
                    steps.append(("wait", rng.choice([0.5, 1.0, 2.5, 4.0, 4.75, 5.0, 6.0])))
            assert await _history(FastCycleProtocol, steps) == await _history(HttpToolsProtocol, steps), steps

    asyncio.run(compare())


def test_the_protocol_makes_fast_cycles_and_keeps_one_timer_per_connection() -> None:
    async def run() -> None:
        loop = ManualLoop(asyncio.get_running_loop())
        config = Config(app=_answer, lifespan="off", log_level="warning", access_log=False, proxy_headers=False,
                        timeout_keep_alive=5)
        config.load()
        protocol = FastCycleProtocol(config=config, server_state=ServerState(), app_state={},
                                     _loop=loop)  # type: ignore[arg-type]
        protocol.connection_made(Transport())
        for _ in range(3):
            protocol.data_received(_request())
            for _ in range(6):
                await asyncio.sleep(0)
            assert type(protocol.cycle) is FastResponseCycle and protocol.cycle.response_complete
        assert len(loop.timers) == 1  # three responses, one timer
        protocol.connection_lost(None)
        assert loop.timers[0].cancelled()

    asyncio.run(run())


def test_router_serve_uses_the_copies_only_on_the_uvicorn_they_follow() -> None:
    assert issubclass(OneWriteHttpToolsProtocol, FastCycleProtocol) == FOLLOWS_INSTALLED_UVICORN
